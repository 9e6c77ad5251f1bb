"""Checkpoints: everything a resume needs, written atomically, read with torch.load(weights_only=True).

The file holds only tensors and builtin containers (no pickled classes), so loading never executes
code: the numpy RNG state's array is stored as a tensor, the config as a plain dict.
"""
from __future__ import annotations

import io
import math
import os
import pickle
import random
import re
import tempfile
from pathlib import Path
from typing import Optional

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
    remove_stale_temps(path)
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


def remove_stale_temps(path: Path) -> list[Path]:
    """Deletes the temp files of earlier saves of `path` that died before their rename (SIGKILL, power loss):
    only names of save()'s own pattern, .<name>.<8 mkstemp characters>.tmp, beside `path`. Safe because one
    process writes a run folder (runlock.RunLock); a save of another file never touches them."""
    pattern = re.compile(rf"\.{re.escape(Path(path).name)}\.[A-Za-z0-9_]{{8}}\.tmp")
    removed = []
    try:
        entries = list(Path(path).parent.iterdir())
    except OSError:
        return removed
    for entry in entries:
        if pattern.fullmatch(entry.name) and entry.is_file() and not entry.is_symlink():
            entry.unlink(missing_ok=True)
            removed.append(entry)
    return removed


def load(path: Path, require: tuple[str, ...] = ()) -> dict:
    """Loads a checkpoint written by `save`; refuses anything else with one clear line. `require`: keys that
    must be present (e.g. "model" for weights)."""
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
    missing = [key for key in require if key not in state]
    if missing:
        raise CheckpointError(f"{path} lacks {', '.join(missing)}: it is incomplete or was edited; use another "
                              f"checkpoint")
    if "model" in require and not (isinstance(state["model"], dict)
                                   and all(isinstance(v, torch.Tensor) for v in state["model"].values())):
        raise CheckpointError(f"{path}: 'model' is not a mapping of tensors; use another checkpoint")
    return state


RESUME_KEYS = ("model", "optimizer", "scheduler", "scaler", "epoch", "step", "batches_done", "best_top1", "config")


def _int_in(state: dict, key: str, low: int, high: int, source: str) -> int:
    value = state[key]
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise CheckpointError(f"{source}: {key}={value!r} lies outside [{low}, {high}]; the file is damaged or was "
                              f"edited; resume from another checkpoint")
    return value


def check_resume_state(state: dict, *, source: str, epochs: int) -> None:
    """Counters and config a resume would trust, checked before anything is built: a resume state must hold every
    part, its config must be a valid one, epoch lie in [0, sched.epochs], best_top1 be -1 (none yet) or in
    [0, 100]. The counters' agreement with the data (check_counters) needs the loader's length."""
    missing = [key for key in RESUME_KEYS if key not in state]
    if missing:
        raise CheckpointError(f"{source} lacks {', '.join(missing)}, which a resume needs; it is incomplete or "
                              f"was edited; resume from another checkpoint, or start from its weights with "
                              f"--init-from")
    try:
        if not isinstance(state["config"], dict):
            raise UserError("not a mapping")
        config.from_dict(state["config"])
    except (UserError, TypeError, ValueError) as e:
        raise CheckpointError(f"{source}: the config saved in it is not valid ({e}); the file is damaged or was "
                              f"edited") from None
    _int_in(state, "epoch", 0, epochs, source)
    _int_in(state, "step", 0, 2**62, source)
    _int_in(state, "batches_done", 0, 2**62, source)
    saved_accum = config.flat_settings(state["config"])["data.accum_steps"]
    if state["batches_done"] % saved_accum:
        raise CheckpointError(f"{source}: batches_done={state['batches_done']} is not a whole number of optimizer "
                              f"steps of {saved_accum} micro-batches; the file is damaged or was edited")
    best = state["best_top1"]
    if not isinstance(best, (int, float)) or isinstance(best, bool) or not (best == -1.0 or 0.0 <= best <= 100.0):
        raise CheckpointError(f"{source}: best_top1={best!r} is neither -1 (none yet) nor a top-1 in [0, 100]; "
                              f"the file is damaged or was edited")


def check_counters(counters: dict, *, steps_per_epoch: int, saved_accum: int, source: str) -> None:
    """The saved counters must describe a point of this run: batches_done whole optimizer steps of the epoch in
    progress, fewer than an epoch, and step = epoch x steps_per_epoch + those steps."""
    epoch, step, done = counters["epoch"], counters["step"], counters["batches_done"]
    steps_done, rest = divmod(done, max(saved_accum, 1))
    if rest or steps_done >= steps_per_epoch or step != epoch * steps_per_epoch + steps_done:
        raise CheckpointError(
            f"{source}: its counters (epoch {epoch}, step {step}, {done} micro-batches of {saved_accum} per step "
            f"done) do not fit this run's {steps_per_epoch} steps per epoch; the file is damaged or was edited, or "
            f"the data changed; resume from another checkpoint")


def reconcile_best(run_dir: Path, state: dict) -> tuple[dict, Optional[str]]:
    """Makes <run_dir>/best.pth agree with the best top-1 that `state` (the resume checkpoint) records.

    The epoch end writes last.pth, then best.pth. A kill (or a failed write) between the two leaves last.pth at
    the new best epoch and best.pth older or missing; last.pth then *is* the best state, so best.pth is rewritten
    from it. Where the best epoch's weights are gone (an older checkpoint, a removed file), the run's best
    becomes what best.pth holds, so the next better epoch replaces it. Returns (state, message or None)."""
    recorded, best_epoch = state["best_top1"], state.get("best_epoch")
    if recorded < 0:
        return state, None
    path = Path(run_dir) / "best.pth"
    try:
        best = load(path, require=("model",)) if path.is_file() else None
        problem = "is missing" if best is None else None
    except CheckpointError:
        best, problem = None, "is unreadable"
    if best is not None:
        same = best.get("best_top1") == recorded and (best_epoch is None or best.get("epoch") == best_epoch)
        if same:
            return state, None
        problem = f"holds epoch {best.get('epoch')} (val top-1 {best.get('best_top1', float('nan')):.2f})"
    told = f"the run recorded its best val top-1 {recorded:.2f} at epoch {best_epoch or '?'}"
    if best_epoch is not None and best_epoch == state["epoch"] and state["batches_done"] == 0:
        save(path, {k: v for k, v in state.items() if k != "format"})
        return state, f"repaired {path}: it {problem} but {told}, whose state the resume checkpoint holds; rewritten"
    kept = best.get("best_top1", -1.0) if best is not None else -1.0
    kept = kept if isinstance(kept, (int, float)) and math.isfinite(kept) else -1.0
    state = {**state, "best_top1": kept, "best_epoch": best.get("epoch") if best is not None else 0}
    return state, (f"warning: {path} {problem} but {told}, whose weights are gone; best.pth is kept and an epoch "
                   f"better than {kept:.2f} replaces it")


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
            best_top1: float, best_epoch: int, config: dict, rng: list[dict]) -> dict:
    """The full resume state. epoch: the epoch in progress (0-based); batches_done: micro-batches of it
    already trained (0 at an epoch boundary), a whole number of optimizer steps of config's data.accum_steps;
    best_epoch: the epoch (from 1) whose val top-1 is best_top1, 0 before any; rng: one rng_state() per rank."""
    from pgt_train.models import unwrap
    return {
        "model": clean_state_dict(unwrap(model).state_dict()),
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "scaler": scaler.state_dict(),
        "epoch": epoch, "step": step, "batches_done": batches_done, "best_top1": best_top1,
        "best_epoch": best_epoch, "config": config, "rng": rng,
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
    counters = {k: state[k] for k in ("epoch", "step", "batches_done", "best_top1")}
    counters["best_epoch"] = state.get("best_epoch", 0)
    return {**counters, "batches_done": adapt_batches_done(state["batches_done"], saved=state["config"],
                                                           current=config)}


def adapt_batches_done(batches_done: int, *, saved: dict, current: dict) -> int:
    """Micro-batches of the epoch done, in today's micro-batches. data.accum_steps may change on a resume (the
    global batch, hence what an optimizer step trains, stays): a checkpoint lies on an optimizer-step boundary,
    so the images done are (batches_done / saved accum) steps x data.batch_size, the same whatever the split,
    and each rank skips steps x today's accum_steps micro-batches of today's size: the same images."""
    saved_accum = config.flat_settings(saved)["data.accum_steps"]
    current_accum = config.flat_settings(current)["data.accum_steps"]
    return batches_done // saved_accum * current_accum
