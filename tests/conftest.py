"""Test set-up: Keras 2 for Model Garden, quiet TensorFlow, small thread pools."""
import os

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import spinesearch  # noqa: E402,F401  (sets the environment before TensorFlow loads)
