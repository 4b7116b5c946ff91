"""mlpipe: an MLflow pipeline that takes an image classifier from raw data to a REST endpoint."""

__version__ = "0.1.0"
