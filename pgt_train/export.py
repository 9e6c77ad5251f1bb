"""pgt-train export RUN_DIR --out model.safetensors: weights as safetensors, the run's config beside them.

Refuses, before writing anything: an --out not ending in .safetensors, existing files (unless --force),
the run's own files (always), and a checkpoint with NaN/inf in any parameter or buffer.

The file loads with plain `model.load_state_dict(safetensors.torch.load_file(path))`, or through timm:
    timm.create_model(name, pretrained=True, num_classes=C,
                      pretrained_cfg_overlay=dict(file=path, num_classes=C))
"""
from __future__ import annotations

import argparse
import os
import tempfile
from pathlib import Path

import torch
import yaml
from safetensors.torch import save_file

from pgt_train import checkpoint
from pgt_train.errors import UserError


# What a run folder needs to resume and to be read; an export never writes over them, not even with --force.
RUN_FILES = ("last.pth", "best.pth", "config.yaml", "summary.csv")


def output_paths(out: Path) -> tuple[Path, Path]:
    """(weights, config): <name>.safetensors and <name>.yaml beside it, so the two never share a name."""
    out = Path(out)
    if out.suffix != ".safetensors":
        raise UserError(f"--out {out}: the weights file must end in .safetensors "
                        f"(the run's config is written beside it as <name>.yaml)")
    return out, out.with_suffix(".yaml")


def check_targets(paths: tuple[Path, ...], run_dir: Path, force: bool) -> None:
    protected = {(Path(run_dir) / name).resolve() for name in RUN_FILES}
    for path in paths:
        if path.resolve() in protected:
            raise UserError(f"--out: {path} is the run's own {path.name}; choose another --out")
        if path.is_dir():
            raise UserError(f"--out: {path} is a folder; give a file name ending in .safetensors")
        if path.exists() and not force:
            raise UserError(f"{path} exists; choose another --out, or pass --force to replace it")


def finite_weights(state: dict, source: Path) -> dict:
    """The checkpoint's parameters and buffers, unprefixed; refuses any NaN/inf (e.g. BN running_var)."""
    weights = {k: v.contiguous() for k, v in checkpoint.clean_state_dict(state["model"]).items()}
    bad = [k for k, v in weights.items() if v.is_floating_point() and not torch.isfinite(v).all()]
    if bad:
        raise UserError(f"{source} holds non-finite values in {len(bad)} tensors (e.g. {bad[0]}); "
                        f"nothing was exported: export the other checkpoint (--checkpoint best|last) or retrain")
    return weights


def _write_atomically(path: Path, write) -> None:
    """write(tmp_path) into a temp file beside `path`, then rename it over `path`: never a half file."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        os.chmod(tmp, 0o644)  # mkstemp's 0600 would make the exported model private
        os.replace(tmp, path)
    finally:
        Path(tmp).unlink(missing_ok=True)


def export(run_dir: Path, out: Path, which: str = "best", force: bool = False) -> tuple[Path, Path, str]:
    """Checks everything first (names, existing files, finite values), then writes weights and config; returns
    their paths and a line naming the epoch exported."""
    source = Path(run_dir) / f"{which}.pth"
    weights_path, config_path = output_paths(out)
    check_targets((weights_path, config_path), Path(run_dir), force)
    state = checkpoint.load(source, require=("model", "config", "counters"))
    weights = finite_weights(state, source)
    model_cfg = state["config"]["model"]
    metadata = {"format": "pt", "model": model_cfg["name"], "num_classes": str(model_cfg["num_classes"]),
                "norm": model_cfg["norm"], "source": str(source),
                "epoch": str(state["counters"]["epochs_done"])}
    weights_path.parent.mkdir(parents=True, exist_ok=True)
    _write_atomically(weights_path, lambda tmp: save_file(weights, tmp, metadata=metadata))
    config_text = yaml.safe_dump(state["config"], sort_keys=False)
    _write_atomically(config_path, lambda tmp: Path(tmp).write_text(config_text))
    return weights_path, config_path, describe(state, which, Path(run_dir))


def describe(state: dict, which: str, run_dir: Path) -> str:
    """Which epoch was exported; for best.pth, a warning where last.pth records its best at another epoch (a kill
    between the epoch end's two writes: the next --resume auto rewrites best.pth)."""
    counters = state["counters"]
    top1 = counters.get("best_top1") if which == "best" else None
    line = f"{which}.pth: epoch {counters.get('epochs_done')}" + (f", val top-1 {top1:.2f} %"
                                                                  if isinstance(top1, float) else "")
    if which != "best" or not (run_dir / "last.pth").is_file():
        return line
    try:
        last = checkpoint.load(run_dir / "last.pth")
    except checkpoint.CheckpointError:
        return line
    recorded = last.get("counters") if isinstance(last.get("counters"), dict) else {}
    if recorded.get("best_epoch") not in (None, 0, counters.get("epochs_done")):
        line += (f"; warning: last.pth records the best val top-1 {recorded.get('best_top1', float('nan')):.2f} at "
                 f"epoch {recorded['best_epoch']}: best.pth is stale; pgt-train --resume auto on the run repairs it")
    return line


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="pgt-train export", description=__doc__.splitlines()[0])
    p.add_argument("run_dir", type=Path)
    p.add_argument("--out", type=Path, required=True,
                   help="the .safetensors file to write; the config goes beside it as <name>.yaml")
    p.add_argument("--checkpoint", choices=("best", "last"), default="best")
    p.add_argument("--force", action="store_true", help="replace existing output files (never the run's own)")
    args = p.parse_args(argv)
    if not args.run_dir.is_dir():
        raise UserError(f"run folder not found: {args.run_dir}")
    weights, config_path, what = export(args.run_dir, args.out, args.checkpoint, force=args.force)
    print(f"wrote {weights} and {config_path} from {what}")
    return 0
