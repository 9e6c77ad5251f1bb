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
import warnings
from pathlib import Path
from typing import Optional

import numpy as np
import torch
from torch import nn

from pgt_train import config
from pgt_train.counters import Counters
from pgt_train.errors import UserError

FORMAT = "pgt-train/2"  # the counters as one entry, "counters" (counters.Counters)
FORMAT_V1 = "pgt-train/1"  # the counters as flat keys (epoch, step, batches_done, best_top1, best_epoch); still read
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


def is_torch_file(path: Path) -> bool:
    """A zip archive (torch.save's format) or a pickle (its legacy format, protocol 2 and up: byte 0x80)."""
    try:
        with open(path, "rb") as f:
            head = f.read(4)
    except OSError:
        return False
    return head.startswith(b"PK\x03\x04") or head[:1] == b"\x80"


def load(path: Path, require: tuple[str, ...] = ()) -> dict:
    """Loads a checkpoint written by `save`; refuses anything else with one clear line. `require`: keys that
    must be present (e.g. "model" for weights)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    if not is_torch_file(path):
        raise CheckpointError(f"{path} is not a readable checkpoint: it is not a file torch.save writes (neither a "
                              f"zip archive nor a pickle); give a .pth that pgt-train wrote")
    try:
        with warnings.catch_warnings():  # torch's own warnings would add lines to the one this raises
            warnings.simplefilter("ignore")
            state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        blocked = re.search(r"GLOBAL (\S+)", str(e))  # torch names the class or function it refused
        what = f" ({blocked.group(1)})" if blocked else ""
        raise CheckpointError(f"refused to load {path}: it holds pickled objects{what} that weights_only loading "
                              f"does not allow (nothing was executed); use a checkpoint that pgt-train wrote") from None
    except Exception as e:  # garbage makes the unpickler fail in many ways (EOFError, IndexError, ...)
        first = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
        raise CheckpointError(f"{path} is not a readable checkpoint (truncated or another format): {first}") from None
    if not isinstance(state, dict) or state.get("format") not in (FORMAT, FORMAT_V1):
        raise CheckpointError(f"{path} is not a pgt-train checkpoint (no '{FORMAT}' format tag)")
    if state["format"] == FORMAT_V1:
        state = upgrade_v1(state)
    missing = [key for key in require if key not in state]
    if missing:
        raise CheckpointError(f"{path} lacks {', '.join(missing)}: it is incomplete or was edited; use another "
                              f"checkpoint")
    if "model" in require and not (isinstance(state["model"], dict)
                                   and all(isinstance(v, torch.Tensor) for v in state["model"].values())):
        raise CheckpointError(f"{path}: 'model' is not a mapping of tensors; use another checkpoint")
    return state


RESUME_KEYS = ("model", "optimizer", "scheduler", "scaler", "counters", "config")


def upgrade_v1(state: dict) -> dict:
    """A "pgt-train/1" file in today's form: its flat counters become one "counters" entry. batches_done counted
    micro-batches of the saved data.accum_steps; a count that is not whole steps stays fractional, which the
    resume check refuses. A file too damaged to convert is left without counters (a resume refuses it)."""
    flat = {key: state[key] for key in ("epoch", "step", "batches_done", "best_top1", "best_epoch") if key in state}
    rest = {key: value for key, value in state.items() if key not in flat}
    try:
        accum = config.flat_settings(state["config"])["data.accum_steps"]
        steps, micro = divmod(flat["batches_done"], accum)
        rest["counters"] = {"epochs_done": flat["epoch"], "steps_done": flat["step"],
                            "epoch_steps_done": flat["batches_done"] / accum if micro else steps,
                            "best_top1": flat["best_top1"], "best_epoch": flat.get("best_epoch", 0)}
    except (KeyError, TypeError, ValueError, ZeroDivisionError, config.ConfigError):
        pass
    return {**rest, "format": FORMAT}


def _damaged(source: str, what: str) -> CheckpointError:
    return CheckpointError(f"{source}: {what}; the file is damaged or was edited; resume from another checkpoint")


def check_resume_state(state: dict, *, source: str, epochs: int) -> None:
    """Counters and config a resume would trust, checked before anything is built: a resume state must hold every
    part, its config must be a valid one, epochs_done lie in [0, sched.epochs], best_top1 be -1 (none yet) or in
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
    try:
        counters = Counters.from_state_dict(state["counters"])
    except ValueError as e:
        raise _damaged(source, str(e)) from None
    for key, high in (("epochs_done", epochs), ("steps_done", 2**62), ("epoch_steps_done", 2**62)):
        if not 0 <= getattr(counters, key) <= high:
            raise _damaged(source, f"{key}={getattr(counters, key)!r} lies outside [0, {high}]")
    best = counters.best_top1
    if not (best == -1.0 or 0.0 <= best <= 100.0):
        raise _damaged(source, f"best_top1={best!r} is neither -1 (none yet) nor a top-1 in [0, 100]")
    if not 0 <= counters.best_epoch <= counters.epochs_done:
        raise _damaged(source, f"best_epoch={counters.best_epoch} lies outside [0, {counters.epochs_done}]")


def check_counters(counters: Counters, *, steps_per_epoch: int, source: str) -> None:
    """The saved counters must describe a point of this run: fewer steps of the epoch in progress than an epoch
    holds, and steps_done = epochs_done x steps_per_epoch + those steps."""
    misfit = counters.misfit(steps_per_epoch)
    if misfit:
        raise CheckpointError(f"{source}: its counters ({misfit}) do not fit this run's {steps_per_epoch} steps per "
                              f"epoch; the file is damaged or was edited, or the data changed; resume from another "
                              f"checkpoint")


def reconcile_best(run_dir: Path, state: dict) -> tuple[dict, Optional[str]]:
    """Makes <run_dir>/best.pth agree with the best top-1 that `state` (the resume checkpoint) records.

    The epoch end writes last.pth, then best.pth. A kill (or a failed write) between the two leaves last.pth at
    the new best epoch and best.pth older or missing; last.pth then *is* the best state, so best.pth is rewritten
    from it. Where the best epoch's weights are gone (an older checkpoint, a removed file), the run's best
    becomes what best.pth holds, so the next better epoch replaces it. Returns (state, message or None)."""
    counters = Counters.from_state_dict(state["counters"])  # checked by check_resume_state
    recorded, best_epoch = counters.best_top1, counters.best_epoch or None  # 0: not recorded (an older file)
    if recorded < 0:
        return state, None
    path = Path(run_dir) / "best.pth"
    try:
        best = load(path, require=("model",)) if path.is_file() else None
        problem = "is missing" if best is None else None
    except CheckpointError:
        best, problem = None, "is unreadable"
    if best is not None:
        held = best.get("counters") if isinstance(best.get("counters"), dict) else {}
        if held.get("best_top1") == recorded and best_epoch in (None, held.get("epochs_done")):
            return state, None
        problem = f"holds epoch {held.get('epochs_done')} (val top-1 {held.get('best_top1', float('nan')):.2f})"
    told = f"the run recorded its best val top-1 {recorded:.2f} at epoch {best_epoch or '?'}"
    if best_epoch is not None and best_epoch == counters.epochs_done and counters.epoch_steps_done == 0:
        save(path, {k: v for k, v in state.items() if k != "format"})
        return state, f"repaired {path}: it {problem} but {told}, whose state the resume checkpoint holds; rewritten"
    kept = held.get("best_top1", -1.0) if best is not None else -1.0
    kept = float(kept) if isinstance(kept, (int, float)) and math.isfinite(kept) else -1.0
    kept_epoch = held.get("epochs_done", 0) if best is not None and kept >= 0 else 0
    counters.best_top1, counters.best_epoch = kept, kept_epoch if isinstance(kept_epoch, int) else 0
    return {**state, "counters": counters.state_dict()}, (
        f"warning: {path} {problem} but {told}, whose weights are gone; best.pth is kept and an epoch better than "
        f"{kept:.2f} replaces it")


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


def capture(*, model: nn.Module, optimizer, scheduler, scaler, counters: Counters, config: dict,
            rng: list[dict]) -> dict:
    """The full resume state; rng: one rng_state() per rank."""
    from pgt_train.models import unwrap
    return {
        "model": clean_state_dict(unwrap(model).state_dict()),
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "scaler": scaler.state_dict(),
        "counters": counters.state_dict(), "config": config, "rng": rng,
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
            config: dict) -> Counters:
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
    return Counters.from_state_dict(state["counters"])
