"""SpineSearch: architecture search for object detection on TF Model Garden."""
import os

# Model Garden 2.20 builds on tf_keras (Keras 2). TensorFlow reads this variable
# when it is first imported, so it has to be set before any import of it.
os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
# TensorFlow C++ logging (e.g. "failed call to cuInit" on a machine without a
# GPU) would break the one-line error reports of our command-line tools; set
# TF_CPP_MIN_LOG_LEVEL=0 to see it.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

__version__ = "0.1.0"
