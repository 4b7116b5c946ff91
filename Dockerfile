# Training image for mlpipe: TensorFlow's own CUDA image, pinned to the project's version.
#   make docker-build        (docker build --network host -t mlpipe-gpu:latest .)
#   make docker-run STAGE=train ARGS="-P data=runs:/<id>/preprocessed"
# On machines that cannot pull Docker Hub, `make docker-bases` builds a local stand-in with the
# base's name first (docker/bases.sh). No credentials are baked in: pass MLFLOW_TRACKING_URI
# (and a login) at `docker run`.
ARG BASE_IMAGE=tensorflow/tensorflow:2.21.0-gpu
FROM ${BASE_IMAGE}
# The commit the code in this image was built from: runs that use the image's own code (the
# docker_env project) record it, since the checkout that starts them may have moved on.
ARG SOURCE_COMMIT=""

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    MLPIPE_SOURCE_COMMIT=${SOURCE_COMMIT}
LABEL org.opencontainers.image.revision=${SOURCE_COMMIT}

# git: MLflow records the source commit of `mlflow run .` with it, and stage reuse keys on it.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends git \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --create-home --uid 1000 mlpipe
WORKDIR /home/mlpipe/app

# Dependencies first, read from pyproject.toml alone, so a code change rebuilds only the layers
# below; tensorflow is already in the base image at the pinned version and is kept.
COPY --chown=mlpipe:mlpipe pyproject.toml ./
RUN python3 -c "import tomllib; print('\n'.join(tomllib.load(open('pyproject.toml', 'rb'))['project']['dependencies']))" > /tmp/requirements.txt \
    && pip install --no-cache-dir -r /tmp/requirements.txt \
    && rm /tmp/requirements.txt

COPY --chown=mlpipe:mlpipe . .
RUN pip install --no-cache-dir --no-deps .
USER 1000:1000

CMD ["mlflow", "run", ".", "-e", "train", "--env-manager", "local"]
