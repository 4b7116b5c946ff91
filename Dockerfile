# GPU training image for mlpipe: TensorFlow's own CUDA image, pinned to the project's version.
#   docker build -t mlpipe-gpu .
#   docker run --rm --gpus all -e MLFLOW_TRACKING_URI=http://<tracking-host>:5000 \
#       mlpipe-gpu mlflow run . -e train -P data=runs:/<id>/preprocessed --env-manager local
# No credentials are baked in: pass MLFLOW_TRACKING_URI (and any token) at `docker run`.
FROM tensorflow/tensorflow:2.21.0-gpu

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    TF_CPP_MIN_LOG_LEVEL=2

RUN useradd --create-home --uid 1000 mlpipe
WORKDIR /home/mlpipe/app

# Dependencies first, so code changes do not reinstall them; tensorflow is already in the
# base image at the pinned version and is kept.
COPY --chown=mlpipe:mlpipe pyproject.toml README.md ./
COPY --chown=mlpipe:mlpipe mlpipe_vision ./mlpipe_vision
RUN pip install --no-cache-dir .

COPY --chown=mlpipe:mlpipe . .
USER 1000:1000

CMD ["mlflow", "run", ".", "-e", "train", "--env-manager", "local"]
