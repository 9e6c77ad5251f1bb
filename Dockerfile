# pgt-train on an NVIDIA GPU: PyTorch from the pinned official CUDA image, DALI and the rest from PyPI.
#   docker build --network=host -t pgt-train .
#   docker run --rm --gpus all --ipc=host --user "$(id -u):$(id -g)" \
#       -v /path/to/imagenet:/data -v "$PWD/runs":/workspace/runs pgt-train \
#       --config configs/resnet50_cosine_pgt.yaml data.root=/data
# Build args: BASE_IMAGE (any image with python3, `python3 -m pip` and torch: the official PyTorch and NGC
# images, a conda or venv, or Debian/Ubuntu's own python3; tests/docker/ makes two local ones),
# EXTRAS (pip extras of pgt-train). Behind a TLS-intercepting proxy, put its CA as docker/ca/*.crt (git-ignored).
ARG BASE_IMAGE=pytorch/pytorch:2.5.1-cuda12.4-cudnn9-runtime
FROM ${BASE_IMAGE}
ARG EXTRAS=dali,report

# HOME and caches in /tmp: the container may run as any --user uid, which has no home in the image.
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PYTHONUNBUFFERED=1 \
    HOME=/tmp MPLCONFIGDIR=/tmp/matplotlib TORCH_HOME=/tmp/torch
# tini as PID 1: docker stop's SIGTERM goes straight to pgt-train (which checkpoints and exits 75), and
# exited loader workers are reaped. Then extra CAs (docker/ca/*.crt) join the trust store before any pip.
COPY docker/ca/ /usr/local/share/ca-certificates/pgt-train/
RUN apt-get update && apt-get install -y --no-install-recommends tini ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && find /usr/local/share/ca-certificates/pgt-train -type f ! -name '*.crt' -delete \
    && update-ca-certificates
ENV PIP_CERT=/etc/ssl/certs/ca-certificates.crt REQUESTS_CA_BUNDLE=/etc/ssl/certs/ca-certificates.crt

WORKDIR /opt/pgt-train
# python3 and `python3 -m pip`, never `python`/`pip`: Debian and Ubuntu have no `python` command, and the pip on
# PATH may belong to another Python. PIP_BREAK_SYSTEM_PACKAGES=1, on the two installs only: a Debian/Ubuntu
# system Python refuses pip installs (PEP 668) unless told; where pip installs anyway (conda, a venv, the
# official PyTorch and NGC images) it changes nothing, and the image does not keep it for its users.
# pip installs where the base keeps its torch, and the base's torch satisfies torch>=2.4, so pip keeps it.
# Dependencies first, from pyproject.toml alone: a change to pgt_train/ does not reinstall them.
COPY pyproject.toml docker/requirements.py ./
RUN python3 requirements.py "${EXTRAS}" > /tmp/requirements.txt \
    && PIP_BREAK_SYSTEM_PACKAGES=1 python3 -m pip install -r /tmp/requirements.txt \
    && rm /tmp/requirements.txt requirements.py
COPY README.md ./
COPY pgt_train ./pgt_train
RUN PIP_BREAK_SYSTEM_PACKAGES=1 python3 -m pip install --no-deps ".[${EXTRAS}]" && rm -rf build *.egg-info

# Recipes and launchers where the user works; runs/ and data/ are mounted volumes. Any uid may write here.
COPY configs /workspace/configs
COPY scripts /workspace/scripts
RUN mkdir -p /workspace/runs /workspace/data && chmod 1777 /workspace /workspace/runs /workspace/data
WORKDIR /workspace
USER 1000:1000
ENTRYPOINT ["tini", "--", "pgt-train"]
CMD ["--help"]
