#!/usr/bin/env bash
# Makes the local stand-in for the CUDA PyTorch base image (no registry is reachable here):
# Debian 12 minbase + python3 + pip (debootstrap), then a venv at /opt/venv on PATH (as /opt/conda is in
# pytorch/pytorch) holding the torch/torchvision pair the HOST's pip resolves, installed offline from a
# wheelhouse the host downloads (the container cannot see the host's pip config).
# Usage: base_image.sh CACHE_DIR IMAGE_NAME   (needs a running dockerd; DOCKER_HOST may point at it)
# Cached: the image is kept in the daemon's data root under CACHE_DIR; a second call returns at once.
set -euo pipefail
cache=$1 image=$2
if docker image inspect "$image" >/dev/null 2>&1; then echo "base image $image: cached"; exit 0; fi
mirror=$(grep -rhoE '^URIs: *http[^ ]+|^deb +http[^ ]+' /etc/apt/sources.list /etc/apt/sources.list.d/ 2>/dev/null \
         | grep -oE 'http[^ ]+debian/?$' | head -n1 || true)
mirror=${mirror:-http://deb.debian.org/debian}
rootfs=$cache/rootfs wheels=$cache/wheels
if [ ! -e "$rootfs/.complete" ]; then
  rm -rf "$rootfs"  # a half-made rootfs of ours from an interrupted run
  echo "debootstrap bookworm minbase from $mirror (about 3 min) ..."
  debootstrap --variant=minbase --include=python3,python3-pip,python3-venv,ca-certificates \
    bookworm "$rootfs" "$mirror" >"$cache/debootstrap.log" 2>&1 || { tail -20 "$cache/debootstrap.log"; exit 1; }
  touch "$rootfs/.complete"
fi
docker image inspect "$image-rootfs" >/dev/null 2>&1 || tar -C "$rootfs" --exclude=./.complete -c . | docker import - "$image-rootfs"
# torch + torchvision as the host's pip resolves them (its constraints and local wheel folders apply).

python3 -m pip download --disable-pip-version-check -q -d "$wheels" \
  torch torchvision
make=${image//[^a-zA-Z0-9_.-]/-}-make  # a container name: no ":" or "/"
docker rm -f "$make" >/dev/null 2>&1 || true
docker run --network=host --name "$make" -v "$wheels":/wheels:ro "$image-rootfs" sh -c \
  'python3 -m venv /opt/venv && /opt/venv/bin/pip install -q --no-index --no-cache-dir --find-links /wheels torch torchvision \
   && /opt/venv/bin/python -c "import torch, torchvision; print(\"base:\", torch.__version__, torchvision.__version__)"'
docker commit --change 'ENV PATH=/opt/venv/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
  --change 'CMD ["/bin/bash"]' "$make" "$image" >/dev/null
docker rm "$make" >/dev/null
echo "base image $image: made"
