/* pipeline._journalfast: the journal's payload check (pipeline/journal.py,
 * `_check_fast`) for the common case, in one pass in C.
 *
 * plain(value, cleared) is True when value is made only of dicts, lists and
 * tuples (exactly those types) holding str, int, bool, None and finite floats
 * (exactly those types), every dict key a str already in the set `cleared`
 * (keys found to name no credential). False means "not sure": the caller takes
 * its Python path, which raises naming the bad value or learns the new keys.
 * It never raises for the value's content, so a False costs only the time
 * spent, never a wrong verdict.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <math.h>

#define MAX_DEPTH 64

static int plain(PyObject *o, PyObject *cleared, int depth)
{
    PyTypeObject *t = Py_TYPE(o);
    if (t == &PyUnicode_Type || t == &PyLong_Type || t == &PyBool_Type || o == Py_None)
        return 1;
    if (t == &PyFloat_Type)
        return isfinite(PyFloat_AS_DOUBLE(o)) ? 1 : 0;
    if (depth >= MAX_DEPTH)
        return 0;
    if (t == &PyList_Type || t == &PyTuple_Type) {
        /* items read by index each time: nothing here runs Python code that could resize it */
        for (Py_ssize_t i = 0; i < PySequence_Fast_GET_SIZE(o); i++) {
            int r = plain(PySequence_Fast_GET_ITEM(o, i), cleared, depth + 1);
            if (r != 1)
                return r;
        }
        return 1;
    }
    if (t == &PyDict_Type) {
        Py_ssize_t pos = 0;
        PyObject *k, *v;
        while (PyDict_Next(o, &pos, &k, &v)) {
            if (Py_TYPE(k) != &PyUnicode_Type)
                return 0;
            int known = PySet_Contains(cleared, k);
            if (known != 1)
                return known;          /* 0: a new key; -1: an error, raised */
            int r = plain(v, cleared, depth + 1);
            if (r != 1)
                return r;
        }
        return 1;
    }
    return 0;                          /* numpy values, mappings, anything else */
}

static PyObject *py_plain(PyObject *self, PyObject *args)
{
    PyObject *value, *cleared;
    if (!PyArg_ParseTuple(args, "OO!:plain", &value, &PySet_Type, &cleared))
        return NULL;
    int r = plain(value, cleared, 0);
    if (r < 0)
        return NULL;
    return PyBool_FromLong(r);
}

static PyMethodDef methods[] = {
    {"plain", py_plain, METH_VARARGS,
     "plain(value, cleared) -> bool: only dicts, lists and tuples of str, int, bool, None and "
     "finite floats, every key a str in the set cleared (False: not sure, check in Python)"},
    {NULL, NULL, 0, NULL}
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "_journalfast",
    "The journal's payload check for the common case, in C (see pipeline/journal.py).", -1, methods
};

PyMODINIT_FUNC PyInit__journalfast(void)
{
    return PyModule_Create(&module);
}
