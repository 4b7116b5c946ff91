# Stand-in for tensorflow/tensorflow:<version>-gpu, for machines that cannot pull it: the same
# TensorFlow release on the system Python, installed with pip into its site-packages, `python`
# and `python3` on PATH, running as root. What differs: Debian bookworm (Python 3.11.2) instead
# of Ubuntu 22.04 on NVIDIA's CUDA base, so no CUDA, cuDNN or NVIDIA_* settings (TensorFlow runs
# on the CPU), no jupyter, and the host's CA bundle is trusted (PIP_CERT and friends).
FROM debian:bookworm-slim
ARG TENSORFLOW_VERSION
LABEL org.mlpipe.stand-in="tensorflow/tensorflow:${TENSORFLOW_VERSION}-gpu built by docker/bases.sh on Debian, CPU only; not the official image"

ENV LANG=C.UTF-8 \
    PIP_CERT=/etc/ssl/certs/ca-certificates.crt \
    SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt \
    REQUESTS_CA_BUNDLE=/etc/ssl/certs/ca-certificates.crt
COPY host-ca-certificates.crt /etc/ssl/certs/ca-certificates.crt
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 python3-pip python-is-python3 \
    && rm -rf /var/lib/apt/lists/* /usr/lib/python3*/EXTERNALLY-MANAGED \
    && python3 -m pip install --no-cache-dir "tensorflow==${TENSORFLOW_VERSION}" \
    && python3 -c "import tensorflow as tf; print('tensorflow', tf.__version__)"

CMD ["bash"]
