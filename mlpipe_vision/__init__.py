"""mlpipe: an MLflow pipeline that takes an image classifier from raw data to a REST endpoint."""

import os

__version__ = "0.1.0"

# MLPIPE_VERBOSE=1 shows everything the libraries print; see mlpipe_vision.cli.quiet_console.
VERBOSE = os.environ.get("MLPIPE_VERBOSE") == "1"

if not VERBOSE:
    # TensorFlow reads its C++ log level once, when it loads, and every entry point imports
    # this package before TensorFlow: 3 keeps info, warnings and the CUDA probe's error on
    # machines without a GPU off the console.
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
