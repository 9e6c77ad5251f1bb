# pgt-train on an NVIDIA GPU: PyTorch (CUDA 12.4, cuDNN 9) from the official image, DALI from PyPI.
#   docker build -t pgt-train .
#   docker run --gpus all --ipc=host -v /path/to/imagenet:/data -v $PWD/runs:/workspace/runs pgt-train \
#       --config configs/resnet50_cosine_pgt.yaml data.root=/data
FROM pytorch/pytorch:2.5.1-cuda12.4-cudnn9-runtime

ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PYTHONUNBUFFERED=1
WORKDIR /opt/pgt-train
# The image's torch (2.5.1) satisfies torch>=2.4, so pip keeps it and adds timm, DALI and the rest.
COPY pyproject.toml README.md ./
COPY pgt_train ./pgt_train
RUN pip install ".[dali,report]"

# Recipes and launchers where the user works; runs/ is meant to be a mounted volume.
RUN useradd --create-home --uid 1000 trainer && mkdir -p /workspace/runs && chown -R trainer /workspace
COPY --chown=trainer configs /workspace/configs
COPY --chown=trainer scripts /workspace/scripts
USER trainer
WORKDIR /workspace
ENTRYPOINT ["pgt-train"]
CMD ["--help"]
