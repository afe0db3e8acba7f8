"""TensorFlow for the models that train or serve with it, imported once.

Importing TensorFlow costs seconds, so it happens on first use only, never at
import time of models/ or workers/; the first importer sets the runtime up
(quiet logs, one intra-op and one inter-op thread: as fast or faster, and a
steadier latency when the other cores are busy; GPU memory taken as needed).
"""
from __future__ import annotations

import contextlib
import os
import sys


_tf = None                  # the tensorflow module once imported and configured


@contextlib.contextmanager
def _quiet_native_stderr(quiet: bool):
    """Send file descriptor 2 to /dev/null meanwhile: TensorFlow's C++ runtime prints
    info lines ("oneDNN custom operations are on", "All log messages before
    absl::InitializeLog() ...") at import whatever TF_CPP_MIN_LOG_LEVEL says.
    Python exceptions are not lost: they are raised, and printed after the restore."""
    if not quiet:
        yield
        return
    sys.stderr.flush()
    saved = os.dup(2)
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


def tensorflow():
    """Import TensorFlow (once), quiet, with one intra-op and one inter-op thread."""
    global _tf
    if _tf is None:
        # quiet unless the user asked TensorFlow for its logs (TF_CPP_MIN_LOG_LEVEL 0 or 1)
        quiet = os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2") not in ("0", "1")
        os.environ.setdefault("KERAS_BACKEND", "tensorflow")
        with _quiet_native_stderr(quiet):
            import tensorflow as tf
            import keras
        try:
            tf.config.threading.set_intra_op_parallelism_threads(1)
            tf.config.threading.set_inter_op_parallelism_threads(1)
            # several model workers (or a model host and a training run) share one GPU: by
            # default each process would map nearly all of its memory at start
            for gpu in tf.config.list_physical_devices("GPU"):
                tf.config.experimental.set_memory_growth(gpu, True)
        except RuntimeError:        # the runtime was started before us: its settings stay
            pass
        if keras.backend.backend() != "tensorflow":
            raise RuntimeError(f"the models need Keras on the TensorFlow backend, "
                               f"KERAS_BACKEND is {keras.backend.backend()!r}")
        _tf = tf
    return _tf
