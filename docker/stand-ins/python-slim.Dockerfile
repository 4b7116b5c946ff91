# Stand-in for the official python:<version>-slim image (Debian bookworm, CPython built into
# /usr/local, pip from ensurepip), for machines that cannot pull it: docker/bases.sh builds it
# from the host's own build of the same CPython version. What differs: it trusts the host's CA
# bundle (PIP_CERT and friends point at it) and has no GPG key or wheel package.
FROM debian:bookworm-slim
ARG PYTHON_VERSION
LABEL org.mlpipe.stand-in="python:${PYTHON_VERSION}-slim built by docker/bases.sh from the host's CPython; not the official image"

ENV LANG=C.UTF-8 \
    PYTHON_VERSION=${PYTHON_VERSION} \
    PIP_CERT=/etc/ssl/certs/ca-certificates.crt \
    SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt \
    REQUESTS_CA_BUNDLE=/etc/ssl/certs/ca-certificates.crt
COPY host-ca-certificates.crt /etc/ssl/certs/ca-certificates.crt
ADD python.tar.gz /usr/local/
RUN ldconfig \
    && python3 -m ensurepip --default-pip \
    && python3 -c "import ssl, sqlite3, ctypes, lzma, bz2, zlib, readline, uuid; print('python', __import__('sys').version)"

CMD ["python3"]
