"""Checkpoints: everything a resume needs, written atomically, read with torch.load(weights_only=True).

The file holds only tensors and builtin containers (no pickled classes), so loading never executes
code: the numpy RNG state's array is stored as a tensor, the config as a plain dict.
"""
from __future__ import annotations

import io
import os
import pickle
import random
import tempfile
from pathlib import Path

import numpy as np
import torch
from torch import nn

from pgt_train import config
from pgt_train.errors import UserError

FORMAT = "pgt-train/1"
_WRAPPER_PREFIXES = ("module.", "_orig_mod.")  # DDP and torch.compile


class CheckpointError(UserError):
    pass


def rng_state() -> dict:
    np_state = np.random.get_state()
    return {
        "python": random.getstate(),
        "numpy": (np_state[0], torch.from_numpy(np_state[1].copy()), *np_state[2:]),
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }


def gather_rng_states(world_size: int) -> list[dict]:
    """Every rank's rng_state(), in rank order (a collective: all ranks must call it)."""
    if world_size == 1:
        return [rng_state()]
    # as torch.save bytes: plain pickle in all_gather_object cannot carry the numpy key tensor safely
    buf, blobs = io.BytesIO(), [None] * world_size
    torch.save(rng_state(), buf)
    torch.distributed.all_gather_object(blobs, buf.getvalue())
    return [torch.load(io.BytesIO(b), weights_only=True) for b in blobs]


def set_rng_state(state: dict) -> None:
    version, internal, gauss_next = state["python"]
    random.setstate((version, tuple(internal), gauss_next))
    name, keys, *rest = state["numpy"]
    np.random.set_state((name, keys.numpy(), *rest))
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def clean_state_dict(state_dict: dict) -> dict:
    """Removes DDP/compile prefixes so a checkpoint loads into a plain model whatever trained it."""
    out = {}
    for key, value in state_dict.items():
        changed = True
        while changed:
            changed = False
            for prefix in _WRAPPER_PREFIXES:
                if key.startswith(prefix):
                    key, changed = key[len(prefix):], True
        out[key] = value
    return out


def save(path: Path, state: dict) -> None:
    """Writes `state` to a temp file in the same folder, fsyncs, then renames it over `path`.

    A crash or a full disk at any moment leaves the previous file at `path` intact.
    """
    path = Path(path)
    # Serialised in memory first: torch.save turns a write error into an opaque RuntimeError, while a
    # plain write raises OSError (ENOSPC) that we can report. A ResNet-50 state is ~200 MB.
    buffer = io.BytesIO()
    torch.save({"format": FORMAT, **state}, buffer)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(buffer.getbuffer())
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as e:
        Path(tmp).unlink(missing_ok=True)
        raise CheckpointError(f"could not write checkpoint {path}: {e.strerror or e}; "
                              f"the previous checkpoint there (if any) is unchanged") from None
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    try:  # make the rename itself durable
        dir_fd = os.open(path.parent, os.O_RDONLY)
        os.fsync(dir_fd)
        os.close(dir_fd)
    except OSError:
        pass


def load(path: Path) -> dict:
    """Loads a checkpoint written by `save`; refuses anything else with one clear line."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        first = str(e).strip().splitlines()[0][:200]
        raise CheckpointError(f"refused to load {path}: it holds pickled objects that weights_only loading "
                              f"does not allow (nothing was executed): {first}") from None
    except Exception as e:  # garbage makes the unpickler fail in many ways (EOFError, IndexError, ...)
        first = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
        raise CheckpointError(f"{path} is not a readable checkpoint (truncated or another format): {first}") from None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not a pgt-train checkpoint (no '{FORMAT}' format tag)")
    return state


def load_model_weights(model: nn.Module, state_dict: dict, *, source: str, model_name: str) -> None:
    """load_state_dict(strict) with a message that names the models and the keys that differ."""
    state_dict = clean_state_dict(state_dict)
    own = model.state_dict()
    missing = [k for k in own if k not in state_dict]
    unexpected = [k for k in state_dict if k not in own]
    shape = [k for k in own if k in state_dict and own[k].shape != state_dict[k].shape]
    if missing or unexpected or shape:
        parts = [f"{name}: {', '.join(keys[:3])}{' ...' if len(keys) > 3 else ''} ({len(keys)})"
                 for name, keys in (("missing", missing), ("unexpected", unexpected), ("shape differs", shape)) if keys]
        raise CheckpointError(f"{source} does not fit model {model_name}: " + "; ".join(parts))
    model.load_state_dict(state_dict)


def capture(*, model: nn.Module, optimizer, scheduler, scaler, epoch: int, step: int, batches_done: int,
            best_top1: float, config: dict, rng: list[dict]) -> dict:
    """The full resume state. epoch: the epoch in progress (0-based); batches_done: micro-batches of it
    already trained (0 at an epoch boundary); rng: one rng_state() per rank."""
    from pgt_train.models import unwrap
    return {
        "model": clean_state_dict(unwrap(model).state_dict()),
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "scaler": scaler.state_dict(),
        "epoch": epoch, "step": step, "batches_done": batches_done, "best_top1": best_top1,
        "config": config, "rng": rng,
    }


def check_compatible(saved: dict, current: dict, *, source: str) -> None:
    """Refuses to continue a run under different defining settings (config.defining_settings): the run would
    silently become another experiment, and the saved optimizer and scheduler state would override some changes
    anyway. A key the saved config lacks (an older version) counts as its default. sched.epochs may not grow
    either: a resumed schedule continues the saved one; a longer schedule is a new run (--init-from)."""
    diffs = config.diff_defining(saved, current)
    if not diffs:
        return
    changes = "; ".join(f"{key}={old!r} but the config has {new!r}" for key, old, new in diffs)
    longer = (f"; to train longer, start a new run from its weights with --init-from {source}"
              if any(key == "sched.epochs" for key, _, _ in diffs) else "")
    raise CheckpointError(f"{source} was trained with {changes}; resume with the run's own settings (its "
                          f"config.yaml) or start a new run.dir{longer}")


def restore(state: dict, *, model: nn.Module, optimizer, scheduler, scaler, rank: int, source: str,
            config: dict) -> dict:
    """Loads every part of `state` into the live objects; returns the counters to continue from."""
    from pgt_train.models import unwrap
    check_compatible(state.get("config", {}), config, source=source)
    model_name = state.get("config", {}).get("model", {}).get("name", "?")
    load_model_weights(unwrap(model), state["model"], source=f"{source} (model {model_name})",
                       model_name=type(unwrap(model)).__name__)
    try:
        optimizer.load_state_dict(state["optimizer"])
    except (ValueError, KeyError) as e:
        raise CheckpointError(f"{source}: optimizer state does not fit this config ({e})") from None
    scheduler.load_state_dict(state["scheduler"])
    scaler.load_state_dict(state["scaler"])
    rngs = state.get("rng") or []
    if rank < len(rngs):
        set_rng_state(rngs[rank])
    return {k: state[k] for k in ("epoch", "step", "batches_done", "best_top1")}
