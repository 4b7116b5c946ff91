"""mlpipe: an MLflow pipeline that takes an image classifier from raw data to a REST endpoint."""

# Imported first by every entry point: console keeps TensorFlow's C++ start-up lines off the
# console unless MLPIPE_VERBOSE=1, which it must do before TensorFlow loads.
from mlpipe_vision import console  # noqa: F401

__version__ = "0.1.0"
