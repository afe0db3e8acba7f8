/* shm._ringfast: the ring's per-record path (put/get) and its doorbell
 * handshake compiled, with C11 atomics instead of an uncontended lock as the
 * fence. It works on the very memory layout of shm/ring.py (the segment's
 * mmap, through the buffer protocol), so a compiled writer and a pure-Python
 * reader (or the reverse) share one ring.
 *
 * Orderings (see ../shared/ARCHITECTURE.md, "Shared-memory contract"):
 *   writer: claim_seq (relaxed) ; release fence ; copy ; write_seq (release) ;
 *           seq_cst fence ; load the waiting flags -> ring doorbells
 *   reader: write_seq (acquire) ; copy ; acquire fence ; claim_seq (lossy
 *           check) ; cursor (release) ; seq_cst fence ; load writer waiting
 *   waiting flag (set by the sleeping side) ; seq_cst fence ; re-check
 * The two seq_cst fences make the flag/counter handshake a Dekker pair: either
 * the writer sees the flag or the reader sees the new write_seq.
 *
 * What is rare stays in Python: a full lossless ring (make_room), ringing the
 * doorbells, a lapped or overwritten lossy read (the checked get).
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <structmember.h>
#include <stdatomic.h>
#include <stdint.h>
#include <string.h>

/* word offsets (uint64) from the ring's own header, as in shm/ring.py */
#define W_WRITE 8
#define W_CLAIM 9
#define W_WAITING 16
#define FLAGS_WORD 24

typedef _Atomic uint64_t aword;
typedef _Atomic uint8_t abyte;

static inline aword *word(char *hdr, Py_ssize_t i) { return (aword *)(hdr + 8 * i); }

/* Map ``buffer`` writable and check that [hdr, data + cap * rs) lies inside it. */
static int
map_ring(Py_buffer *view, PyObject *buffer, Py_ssize_t hdr_off, Py_ssize_t data_off,
         uint64_t cap, Py_ssize_t rs, char **hdr, char **data)
{
    if (PyObject_GetBuffer(buffer, view, PyBUF_WRITABLE) < 0)
        return -1;
    if (cap < 2 || (cap & (cap - 1)) || rs <= 0 || rs % 8 || hdr_off < 0 || hdr_off % 8 ||
        data_off < hdr_off + 8 * (FLAGS_WORD + 8) ||
        (uint64_t)data_off + cap * (uint64_t)rs > (uint64_t)view->len) {
        PyBuffer_Release(view);
        PyErr_SetString(PyExc_ValueError, "ring layout does not fit the buffer");
        return -1;
    }
    *hdr = (char *)view->buf + hdr_off;
    *data = (char *)view->buf + data_off;
    return 0;
}

static int
closed(char *hdr)
{
    if (hdr == NULL) {
        PyErr_SetString(PyExc_ValueError, "ring is closed");
        return 1;
    }
    return 0;
}

/* ``timeout=`` of put(buf, timeout=5.0), fastcall style */
static int
parse_put(PyObject *const *args, Py_ssize_t nargs, PyObject *kwnames, PyObject **timeout)
{
    Py_ssize_t nkw = kwnames ? PyTuple_GET_SIZE(kwnames) : 0;
    *timeout = NULL;
    if (nargs < 1 || nargs + nkw > 2) {
        PyErr_SetString(PyExc_TypeError, "put(buf, timeout=5.0)");
        return -1;
    }
    if (nargs == 2)
        *timeout = args[1];
    else if (nkw == 1) {
        if (PyUnicode_CompareWithASCIIString(PyTuple_GET_ITEM(kwnames, 0), "timeout") != 0) {
            PyErr_Format(PyExc_TypeError, "put() got an unexpected keyword argument '%U'",
                         PyTuple_GET_ITEM(kwnames, 0));
            return -1;
        }
        *timeout = args[1];
    }
    return 0;
}

/* -- Writer ------------------------------------------------------------------ */
typedef struct {
    PyObject_HEAD
    Py_buffer view;
    char *hdr;                /* NULL once released */
    char *data;
    uint64_t cap, mask;
    Py_ssize_t rs;
    unsigned long long seq;   /* next sequence to write (== write_seq between calls) */
    unsigned long long gate;  /* cached lower bound of the gating readers' cursors */
    int gated;                /* lossless with gating readers: may have to wait */
    Py_ssize_t flag_words;    /* uint64 words of waiting flags to look at */
    PyObject *name;           /* ring name, for errors */
    PyObject *make_room;      /* callable(timeout): waits for space, refreshes gate */
    PyObject *ring_waiters;   /* callable(): rings the doorbells whose flag is set */
} Writer;

static int
Writer_init(Writer *self, PyObject *args, PyObject *kwds)
{
    PyObject *buffer, *name, *make_room, *ring_waiters;
    Py_ssize_t hdr_off, data_off, rs, n_readers;
    unsigned long long cap;
    int gated;
    static char *kw[] = {"buffer", "hdr_off", "data_off", "capacity", "record_size",
                         "n_readers", "gated", "name", "make_room", "ring_waiters", NULL};
    if (self->hdr != NULL) {
        PyErr_SetString(PyExc_RuntimeError, "Writer already initialised");
        return -1;
    }
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "OnnKnnpOOO", kw, &buffer, &hdr_off,
                                     &data_off, &cap, &rs, &n_readers, &gated, &name,
                                     &make_room, &ring_waiters))
        return -1;
    if (map_ring(&self->view, buffer, hdr_off, data_off, cap, rs, &self->hdr, &self->data) < 0)
        return -1;
    self->cap = cap;
    self->mask = cap - 1;
    self->rs = rs;
    self->gated = gated;
    self->flag_words = n_readers > 8 ? (n_readers + 7) / 8 : 1;
    self->seq = atomic_load_explicit(word(self->hdr, W_WRITE), memory_order_acquire);
    self->gate = self->seq;
    Py_INCREF(name);
    Py_INCREF(make_room);
    Py_INCREF(ring_waiters);
    self->name = name;
    self->make_room = make_room;
    self->ring_waiters = ring_waiters;
    return 0;
}

static int
Writer_traverse(Writer *self, visitproc visit, void *arg)
{
    Py_VISIT(self->name);
    Py_VISIT(self->make_room);
    Py_VISIT(self->ring_waiters);
    return 0;
}

static int
Writer_clear(Writer *self)
{
    Py_CLEAR(self->name);
    Py_CLEAR(self->make_room);
    Py_CLEAR(self->ring_waiters);
    return 0;
}

static void
Writer_dealloc(Writer *self)
{
    PyObject_GC_UnTrack(self);
    if (self->hdr != NULL) {
        PyBuffer_Release(&self->view);
        self->hdr = NULL;
    }
    Writer_clear(self);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

/* After publishing: full fence, then ring the doorbells whose flag is set. */
static inline int
notify(char *hdr, Py_ssize_t flag_words, PyObject *ring_waiters)
{
    atomic_thread_fence(memory_order_seq_cst);
    for (Py_ssize_t i = 0; i < flag_words; i++) {
        if (atomic_load_explicit(word(hdr, FLAGS_WORD + i), memory_order_relaxed)) {
            PyObject *r = PyObject_CallNoArgs(ring_waiters);
            if (r == NULL)
                return -1;
            Py_DECREF(r);
            return 0;
        }
    }
    return 0;
}

static PyObject *
Writer_put(Writer *self, PyObject *const *args, Py_ssize_t nargs, PyObject *kwnames)
{
    PyObject *timeout, *src = NULL;
    Py_buffer b = {0};
    const char *p;
    Py_ssize_t n;
    if (parse_put(args, nargs, kwnames, &timeout) < 0 || closed(self->hdr))
        return NULL;
    src = args[0];
    if (PyBytes_CheckExact(src)) {
        p = PyBytes_AS_STRING(src);
        n = PyBytes_GET_SIZE(src);
    } else {
        if (PyObject_GetBuffer(src, &b, PyBUF_SIMPLE) < 0)
            return NULL;
        p = b.buf;
        n = b.len;
    }
    if (n != self->rs) {
        PyErr_Format(PyExc_ValueError, "ring %U: a record is %zd bytes, got %zd",
                     self->name, self->rs, n);
        goto fail;
    }
    if (self->gated && self->seq - self->gate >= self->cap) {
        /* full as far as we know: Python refreshes gate, waits or raises RingFullError */
        PyObject *r = timeout ? PyObject_CallOneArg(self->make_room, timeout)
                              : PyObject_CallNoArgs(self->make_room);
        if (r == NULL)
            goto fail;
        Py_DECREF(r);
        if (closed(self->hdr))
            goto fail;
    }
    {
        uint64_t seq = self->seq;
        char *hdr = self->hdr;
        char *slot = self->data + (seq & self->mask) * (uint64_t)self->rs;
        seq += 1;
        atomic_store_explicit(word(hdr, W_CLAIM), seq, memory_order_relaxed);
        atomic_thread_fence(memory_order_release);   /* claim before the slot's bytes */
        memcpy(slot, p, (size_t)n);
        atomic_store_explicit(word(hdr, W_WRITE), seq, memory_order_release);
        self->seq = seq;
    }
    if (b.obj)
        PyBuffer_Release(&b);
    if (notify(self->hdr, self->flag_words, self->ring_waiters) < 0)
        return NULL;
    Py_RETURN_NONE;
fail:
    if (b.obj)
        PyBuffer_Release(&b);
    return NULL;
}

static PyObject *
Writer_write_words(Writer *self, PyObject *arg)
{
    /* Batched copy of whole records (any C-contiguous buffer of n * record_size
     * bytes) that fit now: claim, copy (two parts across the wrap), publish, notify.
     * Room is the caller's business (RingWriter.write checked it). */
    Py_buffer b;
    if (closed(self->hdr) || PyObject_GetBuffer(arg, &b, PyBUF_C_CONTIGUOUS) < 0)
        return NULL;
    uint64_t n = (uint64_t)(b.len / self->rs);
    if ((Py_ssize_t)(n * self->rs) != b.len || n > self->cap) {
        PyBuffer_Release(&b);
        PyErr_Format(PyExc_ValueError, "ring %U: %zd bytes are not at most %llu whole records",
                     self->name, b.len, (unsigned long long)self->cap);
        return NULL;
    }
    uint64_t seq = self->seq, s = seq & self->mask;
    uint64_t first = n < self->cap - s ? n : self->cap - s;
    char *hdr = self->hdr;
    atomic_store_explicit(word(hdr, W_CLAIM), seq + n, memory_order_relaxed);
    atomic_thread_fence(memory_order_release);
    memcpy(self->data + s * self->rs, b.buf, first * self->rs);
    if (first < n)
        memcpy(self->data, (char *)b.buf + first * self->rs, (n - first) * self->rs);
    seq += n;
    atomic_store_explicit(word(hdr, W_WRITE), seq, memory_order_release);
    self->seq = seq;
    PyBuffer_Release(&b);
    if (notify(hdr, self->flag_words, self->ring_waiters) < 0)
        return NULL;
    Py_RETURN_NONE;
}

static PyObject *
Writer_release(Writer *self, PyObject *Py_UNUSED(ignored))
{
    if (self->hdr != NULL) {
        PyBuffer_Release(&self->view);
        self->hdr = self->data = NULL;
    }
    Py_RETURN_NONE;
}

static PyMethodDef Writer_methods[] = {
    {"put", (PyCFunction)(void (*)(void))Writer_put, METH_FASTCALL | METH_KEYWORDS,
     "put(buf, timeout=5.0): append one record (bytes or any buffer of record_size bytes)."},
    {"write_words", (PyCFunction)Writer_write_words, METH_O,
     "write_words(buf): append whole records that fit now, one claim and one publish."},
    {"release", (PyCFunction)Writer_release, METH_NOARGS,
     "Drop the mapping (the ring is closing); later calls raise ValueError."},
    {NULL}
};

static PyMemberDef Writer_members[] = {
    {"seq", T_ULONGLONG, offsetof(Writer, seq), 0, "next sequence to write"},
    {"gate", T_ULONGLONG, offsetof(Writer, gate), 0, "cached slowest gating cursor"},
    {NULL}
};

static PyTypeObject WriterType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "shm._ringfast.Writer",
    .tp_doc = "The compiled per-record writer of one ring (one per RingWriter).",
    .tp_basicsize = sizeof(Writer),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC,
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)Writer_init,
    .tp_dealloc = (destructor)Writer_dealloc,
    .tp_traverse = (traverseproc)Writer_traverse,
    .tp_clear = (inquiry)Writer_clear,
    .tp_methods = Writer_methods,
    .tp_members = Writer_members,
};

/* -- Reader ------------------------------------------------------------------ */
typedef struct {
    PyObject_HEAD
    Py_buffer view;
    char *hdr;
    char *data;
    uint64_t cap, mask;
    Py_ssize_t rs;
    unsigned long long cursor;     /* next sequence to read */
    unsigned long long committed;  /* last cursor published in shared memory */
    Py_ssize_t cursor_word;
    Py_ssize_t index;              /* this reader's waiting-flag byte */
    int lossy;                     /* may be lapped: check claim after the copy */
    PyObject *slow_get;            /* callable(): the checked get (lapped, overwritten) */
    PyObject *wake_writer;         /* callable() or None: the writer's doorbell */
} Reader;

static int
Reader_init(Reader *self, PyObject *args, PyObject *kwds)
{
    PyObject *buffer, *slow_get, *wake_writer;
    Py_ssize_t hdr_off, data_off, rs, cursor_word, index;
    unsigned long long cap;
    int lossy;
    static char *kw[] = {"buffer", "hdr_off", "data_off", "capacity", "record_size",
                         "cursor_word", "index", "lossy", "slow_get", "wake_writer", NULL};
    if (self->hdr != NULL) {
        PyErr_SetString(PyExc_RuntimeError, "Reader already initialised");
        return -1;
    }
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "OnnKnnnpOO", kw, &buffer, &hdr_off,
                                     &data_off, &cap, &rs, &cursor_word, &index, &lossy,
                                     &slow_get, &wake_writer))
        return -1;
    if (map_ring(&self->view, buffer, hdr_off, data_off, cap, rs, &self->hdr, &self->data) < 0)
        return -1;
    if (cursor_word < FLAGS_WORD + 8 || hdr_off + 8 * (cursor_word + 1) > data_off ||
        index < 0 || index >= 64) {
        PyBuffer_Release(&self->view);
        self->hdr = NULL;
        PyErr_SetString(PyExc_ValueError, "reader slot outside the ring header");
        return -1;
    }
    self->cap = cap;
    self->mask = cap - 1;
    self->rs = rs;
    self->cursor_word = cursor_word;
    self->index = index;
    self->lossy = lossy;
    self->cursor = self->committed =
        atomic_load_explicit(word(self->hdr, cursor_word), memory_order_acquire);
    Py_INCREF(slow_get);
    Py_INCREF(wake_writer);
    self->slow_get = slow_get;
    self->wake_writer = wake_writer;
    return 0;
}

static int
Reader_traverse(Reader *self, visitproc visit, void *arg)
{
    Py_VISIT(self->slow_get);
    Py_VISIT(self->wake_writer);
    return 0;
}

static int
Reader_clear(Reader *self)
{
    Py_CLEAR(self->slow_get);
    Py_CLEAR(self->wake_writer);
    return 0;
}

static void
Reader_dealloc(Reader *self)
{
    PyObject_GC_UnTrack(self);
    if (self->hdr != NULL) {
        PyBuffer_Release(&self->view);
        self->hdr = NULL;
    }
    Reader_clear(self);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static PyObject *
Reader_get(Reader *self, PyObject *Py_UNUSED(ignored))
{
    char *hdr = self->hdr;
    if (closed(hdr))
        return NULL;
    uint64_t cur = self->cursor;
    uint64_t w = atomic_load_explicit(word(hdr, W_WRITE), memory_order_acquire);
    if (w == cur)
        Py_RETURN_NONE;
    if (w - cur > self->cap)                      /* lapped: count the loss in Python */
        return PyObject_CallNoArgs(self->slow_get);
    PyObject *rec = PyBytes_FromStringAndSize(self->data + (cur & self->mask) * self->rs,
                                              self->rs);
    if (rec == NULL)
        return NULL;
    if (self->lossy) {
        atomic_thread_fence(memory_order_acquire);  /* the copy before the claim load */
        uint64_t claim = atomic_load_explicit(word(hdr, W_CLAIM), memory_order_relaxed);
        if (claim > cur + self->cap) {            /* overwritten while we copied */
            Py_DECREF(rec);
            return PyObject_CallNoArgs(self->slow_get);
        }
    }
    cur += 1;
    self->cursor = self->committed = cur;
    atomic_store_explicit(word(hdr, self->cursor_word), cur, memory_order_release);
    if (!self->lossy) {
        /* a lossless writer may be waiting for this slot: Dekker with its flag */
        atomic_thread_fence(memory_order_seq_cst);
        if (atomic_load_explicit(word(hdr, W_WAITING), memory_order_relaxed)) {
            atomic_store_explicit(word(hdr, W_WAITING), 0, memory_order_relaxed);
            if (self->wake_writer != Py_None) {
                PyObject *r = PyObject_CallNoArgs(self->wake_writer);
                if (r == NULL) {
                    Py_DECREF(rec);
                    return NULL;
                }
                Py_DECREF(r);
            }
        }
    }
    return rec;
}

static PyObject *
Reader_set_waiting(Reader *self, PyObject *on)
{
    if (closed(self->hdr))
        return NULL;
    int v = PyObject_IsTrue(on);
    if (v < 0)
        return NULL;
    abyte *flag = (abyte *)(self->hdr + 8 * FLAGS_WORD + self->index);
    atomic_store_explicit(flag, (uint8_t)v, memory_order_relaxed);
    Py_RETURN_NONE;
}

static PyObject *
Reader_release(Reader *self, PyObject *Py_UNUSED(ignored))
{
    if (self->hdr != NULL) {
        PyBuffer_Release(&self->view);
        self->hdr = self->data = NULL;
    }
    Py_RETURN_NONE;
}

static PyMethodDef Reader_methods[] = {
    {"get", (PyCFunction)Reader_get, METH_NOARGS,
     "get(): one record as bytes, or None; commits at once."},
    {"set_waiting", (PyCFunction)Reader_set_waiting, METH_O,
     "set_waiting(on): this reader's waiting flag (the caller fences)."},
    {"release", (PyCFunction)Reader_release, METH_NOARGS,
     "Drop the mapping (the ring is closing); later calls raise ValueError."},
    {NULL}
};

static PyMemberDef Reader_members[] = {
    {"cursor", T_ULONGLONG, offsetof(Reader, cursor), 0, "next sequence to read"},
    {"committed", T_ULONGLONG, offsetof(Reader, committed), 0, "cursor published in shm"},
    {NULL}
};

static PyTypeObject ReaderType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "shm._ringfast.Reader",
    .tp_doc = "The compiled per-record reader of one ring slot (one per RingReader).",
    .tp_basicsize = sizeof(Reader),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC,
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)Reader_init,
    .tp_dealloc = (destructor)Reader_dealloc,
    .tp_traverse = (traverseproc)Reader_traverse,
    .tp_clear = (inquiry)Reader_clear,
    .tp_methods = Reader_methods,
    .tp_members = Reader_members,
};

/* -- seqlock table rows ------------------------------------------------------ */
/* Buffers of shm/table.py: seqs (uint64 per row), data (rows * row_bytes), rows and
 * pos (intp), out (len(pos) * row_bytes), out_seqs (uint64 per out row). */
static void
release_all(Py_buffer *b, int n)
{
    for (int i = 0; i < n; i++)
        if (b[i].obj)
            PyBuffer_Release(&b[i]);
}

static int
get_buffers(PyObject *const *args, Py_ssize_t nargs, Py_buffer *b, const int *writable)
{
    for (Py_ssize_t i = 0; i < nargs; i++) {
        if (PyObject_GetBuffer(args[i], &b[i], PyBUF_C_CONTIGUOUS |
                               (writable[i] ? PyBUF_WRITABLE : 0)) < 0) {
            release_all(b, (int)i);
            return -1;
        }
    }
    return 0;
}

static PyObject *
table_write(PyObject *Py_UNUSED(m), PyObject *const *args, Py_ssize_t nargs)
{
    /* table_write(seqs, data, rows, src, row_bytes): each row made odd, copied, made even */
    static const int writable[] = {1, 1, 0, 0};
    Py_buffer b[4] = {{0}};
    if (nargs != 5) {
        PyErr_SetString(PyExc_TypeError, "table_write(seqs, data, rows, src, row_bytes)");
        return NULL;
    }
    Py_ssize_t rb = PyLong_AsSsize_t(args[4]);
    if (rb == -1 && PyErr_Occurred())
        return NULL;
    if (get_buffers(args, 4, b, writable) < 0)
        return NULL;
    Py_ssize_t n_rows = b[0].len / 8, k = b[2].len / (Py_ssize_t)sizeof(Py_ssize_t);
    if (rb <= 0 || b[1].len < n_rows * rb || b[3].len != k * rb) {
        release_all(b, 4);
        PyErr_SetString(PyExc_ValueError, "table_write: buffers do not match");
        return NULL;
    }
    const Py_ssize_t *rows = b[2].buf;
    for (Py_ssize_t i = 0; i < k; i++) {
        if (rows[i] < 0 || rows[i] >= n_rows) {
            release_all(b, 4);
            PyErr_Format(PyExc_IndexError, "row %zd of a table of %zd", rows[i], n_rows);
            return NULL;
        }
    }
    for (Py_ssize_t i = 0; i < k; i++) {
        aword *seq = (aword *)b[0].buf + rows[i];
        uint64_t s = atomic_load_explicit(seq, memory_order_relaxed);
        atomic_store_explicit(seq, s + 1, memory_order_relaxed);  /* odd: being written */
        atomic_thread_fence(memory_order_release);
        memcpy((char *)b[1].buf + rows[i] * rb, (char *)b[3].buf + i * rb, (size_t)rb);
        atomic_store_explicit(seq, s + 2, memory_order_release);  /* even: stable */
    }
    release_all(b, 4);
    Py_RETURN_NONE;
}

static PyObject *
table_read(PyObject *Py_UNUSED(m), PyObject *const *args, Py_ssize_t nargs)
{
    /* table_read(seqs, data, rows, pos, out, out_seqs, row_bytes) -> [i, ...]: row
     * rows[i] copied into out[pos[i]] with its sequence; the i returned were caught
     * mid-write (odd or moved) and must be read again. */
    static const int writable[] = {0, 0, 0, 0, 1, 1};
    Py_buffer b[6] = {{0}};
    if (nargs != 7) {
        PyErr_SetString(PyExc_TypeError,
                        "table_read(seqs, data, rows, pos, out, out_seqs, row_bytes)");
        return NULL;
    }
    Py_ssize_t rb = PyLong_AsSsize_t(args[6]);
    if (rb == -1 && PyErr_Occurred())
        return NULL;
    if (get_buffers(args, 6, b, writable) < 0)
        return NULL;
    Py_ssize_t n_rows = b[0].len / 8, k = b[2].len / (Py_ssize_t)sizeof(Py_ssize_t);
    Py_ssize_t n_out = b[5].len / 8;
    const Py_ssize_t *rows = b[2].buf, *pos = b[3].buf;
    int ok = rb > 0 && b[1].len >= n_rows * rb && b[3].len == b[2].len && b[4].len == n_out * rb;
    for (Py_ssize_t i = 0; ok && i < k; i++)
        ok = rows[i] >= 0 && rows[i] < n_rows && pos[i] >= 0 && pos[i] < n_out;
    if (!ok) {
        release_all(b, 6);
        PyErr_SetString(PyExc_ValueError, "table_read: buffers or indexes do not match");
        return NULL;
    }
    PyObject *torn = PyList_New(0);
    if (torn == NULL) {
        release_all(b, 6);
        return NULL;
    }
    for (Py_ssize_t i = 0; i < k; i++) {
        aword *seq = (aword *)b[0].buf + rows[i];
        uint64_t s1 = atomic_load_explicit(seq, memory_order_acquire);
        memcpy((char *)b[4].buf + pos[i] * rb, (char *)b[1].buf + rows[i] * rb, (size_t)rb);
        atomic_thread_fence(memory_order_acquire);  /* the copy before the second load */
        uint64_t s2 = atomic_load_explicit(seq, memory_order_relaxed);
        if (s1 == s2 && !(s1 & 1)) {
            ((uint64_t *)b[5].buf)[pos[i]] = s1;
        } else {
            PyObject *x = PyLong_FromSsize_t(i);
            if (x == NULL || PyList_Append(torn, x) < 0) {
                Py_XDECREF(x);
                Py_DECREF(torn);
                release_all(b, 6);
                return NULL;
            }
            Py_DECREF(x);
        }
    }
    release_all(b, 6);
    return torn;
}

/* -- module ------------------------------------------------------------------ */
static PyObject *
fence(PyObject *Py_UNUSED(m), PyObject *Py_UNUSED(ignored))
{
    atomic_thread_fence(memory_order_seq_cst);
    Py_RETURN_NONE;
}

static PyMethodDef module_methods[] = {
    {"fence", fence, METH_NOARGS,
     "Full memory barrier (atomic_thread_fence(memory_order_seq_cst))."},
    {"table_write", (PyCFunction)(void (*)(void))table_write, METH_FASTCALL,
     "table_write(seqs, data, rows, src, row_bytes): seqlock writes of whole rows."},
    {"table_read", (PyCFunction)(void (*)(void))table_read, METH_FASTCALL,
     "table_read(seqs, data, rows, pos, out, out_seqs, row_bytes) -> torn indexes."},
    {NULL}
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "shm._ringfast",
    "Compiled per-record ring path (C11 atomics) on shm/ring.py's layout.", -1, module_methods
};

PyMODINIT_FUNC
PyInit__ringfast(void)
{
    if (PyType_Ready(&WriterType) < 0 || PyType_Ready(&ReaderType) < 0)
        return NULL;
    PyObject *m = PyModule_Create(&module);
    if (m == NULL)
        return NULL;
    Py_INCREF(&WriterType);
    Py_INCREF(&ReaderType);
    if (PyModule_AddObject(m, "Writer", (PyObject *)&WriterType) < 0 ||
        PyModule_AddObject(m, "Reader", (PyObject *)&ReaderType) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
