#!/usr/bin/env bash
# Makes the local stand-ins for a PyTorch base image (no registry is reachable here), both Debian 12 minbase
# + python3 + pip (debootstrap) with the torch/torchvision pair the HOST's pip resolves, installed offline from
# a wheelhouse the host downloads (the container cannot see the host's pip config):
#   SYSTEM_IMAGE  torch installed system-wide into Debian's own python3 (PEP 668 "externally managed", no
#                 `python` command): a user's own Debian/Ubuntu base.
#   VENV_IMAGE    SYSTEM_IMAGE plus a venv at /opt/venv first on PATH, as /opt/conda/bin is in pytorch/pytorch: a
#                 python/pip that PEP 668 does not guard, with `python` too. It sees the base's torch through
#                 --system-site-packages, so it costs a few MB instead of a second multi-GB torch install.
# Usage: base_image.sh CACHE_DIR SYSTEM_IMAGE VENV_IMAGE   (needs a running dockerd; DOCKER_HOST may point at it)
# Cached: the images are kept in the daemon's data root under CACHE_DIR; a second call returns at once.
set -euo pipefail
cache=$1 system=$2 venv=$3
have() { docker image inspect "$1" >/dev/null 2>&1; }
# One container's work, committed as an image: run CMD in FROM (host network, the wheelhouse mounted read-only).
commit() {
  local from=$1 image=$2 path=$3 cmd=$4 name=${2//[^a-zA-Z0-9_.-]/-}-make  # a container name: no ":" or "/"
  docker rm -f "$name" >/dev/null 2>&1 || true
  docker run --network=host --name "$name" -v "$wheels":/wheels:ro "$from" sh -c "$cmd"
  docker commit --change "ENV PATH=$path" --change 'CMD ["/bin/bash"]' "$name" "$image" >/dev/null
  docker rm "$name" >/dev/null
  echo "base image $image: made"
}
rootfs=$cache/rootfs wheels=$cache/wheels
path=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
if ! have "$system"; then
  mirror=$(grep -rhoE '^URIs: *http[^ ]+|^deb +http[^ ]+' /etc/apt/sources.list /etc/apt/sources.list.d/ 2>/dev/null \
           | grep -oE 'http[^ ]+debian/?$' | head -n1 || true)
  mirror=${mirror:-http://deb.debian.org/debian}
  if [ ! -e "$rootfs/.complete" ]; then
    rm -rf "$rootfs"  # a half-made rootfs of ours from an interrupted run
    echo "debootstrap bookworm minbase from $mirror (about 3 min) ..."
    debootstrap --variant=minbase --include=python3,python3-pip,python3-venv,ca-certificates \
      bookworm "$rootfs" "$mirror" >"$cache/debootstrap.log" 2>&1 || { tail -20 "$cache/debootstrap.log"; exit 1; }
    touch "$rootfs/.complete"
  fi
  have "$system-rootfs" || tar -C "$rootfs" --exclude=./.complete -c . | docker import - "$system-rootfs"
  # torch + torchvision as the host's pip resolves them (its constraints and local wheel folders apply).
  python3 -m pip download --disable-pip-version-check -q -d "$wheels" torch torchvision
  # As a user installs into Debian's python3: past PEP 668 once, for this install only (the image keeps the
  # EXTERNALLY-MANAGED marker, so the Dockerfile meets the refusal as on a real Debian/Ubuntu base).
  commit "$system-rootfs" "$system" "$path" \
    'python3 -m pip install -q --break-system-packages --no-index --no-cache-dir --find-links /wheels torch torchvision \
     && ! command -v python && test -e /usr/lib/python3.11/EXTERNALLY-MANAGED \
     && python3 -c "import torch, torchvision; print(\"system base:\", torch.__version__, torchvision.__version__, torch.__file__)"'
fi
if ! have "$venv"; then
  commit "$system" "$venv" "/opt/venv/bin:$path" \
    'python3 -m venv --system-site-packages /opt/venv \
     && /opt/venv/bin/python -c "import torch; print(\"venv base:\", torch.__version__, torch.__file__)"'
fi
echo "base images $system, $venv: ready"
