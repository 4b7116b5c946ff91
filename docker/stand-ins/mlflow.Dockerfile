# Stand-in for MLflow's own server image (ghcr.io/mlflow/mlflow:v<version>), for machines that
# cannot pull it: python:<version>-slim with mlflow from PyPI. What differs: the Python version
# is the host's (docker/bases.sh) and the host's CA bundle is trusted (from the python stand-in).
ARG PYTHON_IMAGE=python:3.11.7-slim
FROM ${PYTHON_IMAGE}
ARG MLFLOW_VERSION
LABEL org.mlpipe.stand-in="ghcr.io/mlflow/mlflow:v${MLFLOW_VERSION} built by docker/bases.sh from PyPI; not the official image"

RUN pip install --no-cache-dir "mlflow==${MLFLOW_VERSION}"
