# pgt-train on an NVIDIA GPU: PyTorch from the pinned official CUDA image, DALI and the rest from PyPI.
#   docker build --network=host -t pgt-train .
#   docker run --rm --gpus all --ipc=host --user "$(id -u):$(id -g)" \
#       -v /path/to/imagenet:/data -v "$PWD/runs":/workspace/runs pgt-train \
#       --config configs/resnet50_cosine_pgt.yaml data.root=/data
# Build args: BASE_IMAGE (any image with python, pip and torch on PATH; tests/docker/ makes a local one),
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
# Dependencies first, from pyproject.toml alone: a change to pgt_train/ does not reinstall them. The base's
# torch satisfies torch>=2.4, so pip keeps it.
COPY pyproject.toml ./
RUN python -c "import tomllib, sys; p = tomllib.load(open('pyproject.toml', 'rb'))['project']; \
extras = [e for e in sys.argv[1].split(',') if e]; \
print('\n'.join(p['dependencies'] + [d for e in extras for d in p['optional-dependencies'][e]]))" "${EXTRAS}" \
    > /tmp/requirements.txt && pip install -r /tmp/requirements.txt && rm /tmp/requirements.txt
COPY README.md ./
COPY pgt_train ./pgt_train
RUN pip install --no-deps ".[${EXTRAS}]" && rm -rf build *.egg-info

# Recipes and launchers where the user works; runs/ and data/ are mounted volumes. Any uid may write here.
COPY configs /workspace/configs
COPY scripts /workspace/scripts
RUN mkdir -p /workspace/runs /workspace/data && chmod 1777 /workspace /workspace/runs /workspace/data
WORKDIR /workspace
USER 1000:1000
ENTRYPOINT ["tini", "--", "pgt-train"]
CMD ["--help"]
