#!/usr/bin/env bash
# A Docker engine of the tests' own: tests/docker/engine.sh install|up|down [CACHE_DIR]
#   install  docker.io and debootstrap from Debian if missing (exit 3 when apt cannot install them)
#   up       dockerd with data and exec roots under CACHE_DIR (default /var/cache/pgt-train-docker, outside the
#            repo, so the base image survives between runs), its own socket, --iptables=false --bridge=none
#            (the host's network is left alone; builds and containers use --network=host). Prints DOCKER_HOST.
#   down     stops the dockerd this script started, by its pid file, and only that one, then unmounts what
#            it left mounted under CACHE_DIR (exec/netns/default).
set -euo pipefail
cmd=$1 cache=${2:-/var/cache/pgt-train-docker}
sock=$cache/docker.sock pidf=$cache/dockerd.pid
case $cmd in
install)
  command -v dockerd >/dev/null && command -v debootstrap >/dev/null && exit 0
  export DEBIAN_FRONTEND=noninteractive
  { apt-get update -q && apt-get install -y -q --no-install-recommends docker.io debootstrap; } >&2 || exit 3
  ;;
up)
  mkdir -p "$cache"
  if [ -s "$pidf" ] && kill -0 "$(cat "$pidf")" 2>/dev/null; then echo "unix://$sock"; exit 0; fi
  rm -f "$pidf"  # stale: a dockerd of ours that died; dockerd refuses to start over a pid file
  # containerd/runc state of this daemon lives under exec-root; the data root keeps images between runs.
  setsid dockerd --data-root="$cache/data" --exec-root="$cache/exec" --pidfile="$pidf" --host="unix://$sock" \
    --iptables=false --ip6tables=false --bridge=none --storage-driver=overlay2 >"$cache/dockerd.log" 2>&1 </dev/null &
  for _ in $(seq 100); do DOCKER_HOST=unix://$sock docker version >/dev/null 2>&1 && break; sleep 0.2; done
  DOCKER_HOST=unix://$sock docker version >/dev/null 2>&1 || { tail -20 "$cache/dockerd.log" >&2; exit 1; }
  echo "unix://$sock"
  ;;
down)
  [ -s "$pidf" ] || exit 0
  pid=$(cat "$pidf")
  kill -TERM "$pid" 2>/dev/null || { rm -f "$pidf"; exit 0; }
  for _ in $(seq 150); do kill -0 "$pid" 2>/dev/null || break; sleep 0.2; done
  # dockerd bind-mounts the host's network namespace here and leaves the mount behind when it ends
  netns=$cache/exec/netns/default
  if ! kill -0 "$pid" 2>/dev/null && mountpoint -q "$netns"; then umount "$netns"; fi
  ;;
*) echo "usage: $0 install|up|down [CACHE_DIR]" >&2; exit 2 ;;
esac
