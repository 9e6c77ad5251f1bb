"""pgt-train export RUN_DIR --out model.safetensors: weights as safetensors, the run's config beside them.

The file loads with plain `model.load_state_dict(safetensors.torch.load_file(path))`, or through timm:
    timm.create_model(name, pretrained=True, num_classes=C,
                      pretrained_cfg_overlay=dict(file=path, num_classes=C))
"""
from __future__ import annotations

import argparse
from pathlib import Path

import yaml
from safetensors.torch import save_file

from pgt_train import checkpoint
from pgt_train.errors import UserError


def export(run_dir: Path, out: Path, which: str = "best") -> tuple[Path, Path]:
    source = Path(run_dir) / f"{which}.pth"
    state = checkpoint.load(source)
    weights = {k: v.contiguous() for k, v in checkpoint.clean_state_dict(state["model"]).items()}
    model_cfg = state["config"]["model"]
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    metadata = {"format": "pt", "model": model_cfg["name"], "num_classes": str(model_cfg["num_classes"]),
                "norm": model_cfg["norm"], "source": str(source), "epoch": str(state["epoch"])}
    save_file(weights, str(out), metadata=metadata)
    config_path = out.with_suffix(".yaml")
    config_path.write_text(yaml.safe_dump(state["config"], sort_keys=False))
    return out, config_path


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="pgt-train export", description=__doc__.splitlines()[0])
    p.add_argument("run_dir", type=Path)
    p.add_argument("--out", type=Path, required=True, help="path of the .safetensors file to write")
    p.add_argument("--checkpoint", choices=("best", "last"), default="best")
    args = p.parse_args(argv)
    if not args.run_dir.is_dir():
        raise UserError(f"run folder not found: {args.run_dir}")
    weights, config_path = export(args.run_dir, args.out, args.checkpoint)
    print(f"wrote {weights} and {config_path}")
    return 0
