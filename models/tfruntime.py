"""TensorFlow for the models that train or serve with it, imported once.

Importing TensorFlow costs seconds, so it happens on first use only, never at
import time of models/ or workers/; the first importer sets the runtime up
(quiet logs, one intra-op and one inter-op thread: as fast or faster, and a
steadier latency when the other cores are busy; GPU memory taken as needed).
"""
from __future__ import annotations

import os


_tf = None                  # the tensorflow module once imported and configured


def tensorflow():
    """Import TensorFlow (once), quiet, with one intra-op and one inter-op thread."""
    global _tf
    if _tf is None:
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
        os.environ.setdefault("KERAS_BACKEND", "tensorflow")
        import tensorflow as tf
        try:
            tf.config.threading.set_intra_op_parallelism_threads(1)
            tf.config.threading.set_inter_op_parallelism_threads(1)
            # several model workers (or a model host and a training run) share one GPU: by
            # default each process would map nearly all of its memory at start
            for gpu in tf.config.list_physical_devices("GPU"):
                tf.config.experimental.set_memory_growth(gpu, True)
        except RuntimeError:        # the runtime was started before us: its settings stay
            pass
        import keras
        if keras.backend.backend() != "tensorflow":
            raise RuntimeError(f"the models need Keras on the TensorFlow backend, "
                               f"KERAS_BACKEND is {keras.backend.backend()!r}")
        _tf = tf
    return _tf
