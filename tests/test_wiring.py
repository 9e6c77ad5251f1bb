"""Every training setting reaches the trainer: a tiny in-process run that differs from a reference run in
one key only ends with different weights (and pgt.alpha 1.0 with `exact` is plain cross-entropy, bit for bit).

Each run: pgt_train.cli.main on the CPU, resnet10t at 32 px, synthetic data, 3 steps of batch 8: the first
(warmup) epoch of a 2-epoch schedule (--run-epochs 1).
A test here fails if the CLI, the trainer or a builder drops a key on the way to the step.
"""
from pathlib import Path

import pytest
import torch

from pgt_train import cli
from tests.helpers import REPO, tiny_run_args

RECIPE = REPO / "configs" / "paper" / "table1" / "resnet18_cosine.yaml"  # the ImageNet setup; shrunk below


def warmup_epoch_args(run_dir: Path, *overrides: str) -> list[str]:
    """cli.main argv for the recipe's first (warmup) epoch of 3 steps at 32 px: the recipe's own LR and loss
    (no α unless `overrides` set one); `overrides` come last and win."""
    return tiny_run_args(run_dir, "run.device=cpu", "run.log_interval=1", "diag.interval=0", *overrides,
                         "--run-epochs", "1", config=RECIPE, model="resnet10t", classes=10, img_size=32,
                         train_size=24, val_size=8, lr=None, alpha=None)


def final_weights(run_dir: Path) -> dict[str, torch.Tensor]:
    state = torch.load(run_dir / "last.pth", map_location="cpu", weights_only=True)
    return {k: v for k, v in state["model"].items() if v.is_floating_point()}


_RUNS: dict[tuple[str, ...], dict[str, torch.Tensor]] = {}


def weights_after(tmp_path_factory, *overrides: str) -> dict[str, torch.Tensor]:
    """Final weights of the tiny run with these overrides (each distinct run trains once per session)."""
    if overrides not in _RUNS:
        run_dir = tmp_path_factory.mktemp("run")
        assert cli.main(warmup_epoch_args(run_dir, *overrides)) == 0
        _RUNS[overrides] = final_weights(run_dir)
    return _RUNS[overrides]


def differing(a: dict, b: dict) -> list[str]:
    """Names of the tensors both runs have whose values differ."""
    return [k for k in a.keys() & b.keys() if not torch.equal(a[k], b[k])]


ALPHA = "pgt.alpha=0.3"
# (reference run, the same run with one key changed); the alpha is set where the key acts only with PGT on
PAIRS = {
    "pgt.alpha": ((), (ALPHA,)),
    "pgt.impl=authors": ((ALPHA,), (ALPHA, "pgt.impl=authors")),
    # CPU fp32 has no GradScaler: the appendix hook sees loss scale 1, not N^2, and its gradient differs
    "pgt.impl=official": ((ALPHA,), (ALPHA, "pgt.impl=official")),
    "loss.label_smoothing": ((), ("loss.label_smoothing=0.3",)),
    "clip.mode=norm": ((), ("clip.mode=norm", "clip.value=1e-3")),  # far below the tiny run's gradient norm
    "clip.mode=agc": ((), ("clip.mode=agc", "clip.value=1e-3")),  # |g|/|w| above 1e-3 is clipped
    "model.norm": ((), ("model.norm=none",)),
    "model.zero_init_last": ((), ("model.zero_init_last=false",)),
    # warmup is epoch 0 (3 steps): per step the LR rises within it, per epoch it stays at warmup_lr
    "sched.update": ((), ("sched.update=epoch",)),
    # the hook's fp16 steps after recovering p (p^α, sum, division, p' - q) change the gradient's last bits
    "pgt.authors_fp16": ((ALPHA, "pgt.impl=authors"), (ALPHA, "pgt.impl=authors", "pgt.authors_fp16=hook")),
}


@pytest.mark.slow
@pytest.mark.parametrize("key", list(PAIRS))
def test_one_key_changes_the_trained_weights(tmp_path_factory, key):
    reference, changed = PAIRS[key]
    a, b = weights_after(tmp_path_factory, *reference), weights_after(tmp_path_factory, *changed)
    different = differing(a, b)
    # the classifier is trained by every step and has no role in any key's init: it differs only if training did
    assert "fc.weight" in different, f"{key} did not change training (differing: {sorted(different)[:5]})"


@pytest.mark.slow
def test_alpha_one_with_exact_is_plain_cross_entropy_bit_for_bit(tmp_path_factory):
    a = weights_after(tmp_path_factory)
    b = weights_after(tmp_path_factory, "pgt.alpha=1.0", "pgt.impl=exact")
    assert a.keys() == b.keys() and not differing(a, b)


@pytest.mark.slow
def test_epoch_shift_changes_the_second_epoch(tmp_path):
    """sched.epoch_shift acts from epoch 1 on (the authors' loop): two epochs of a 3-epoch schedule."""
    weights = []
    for shift in ("false", "true"):
        run_dir = tmp_path / shift
        args = tiny_run_args(run_dir, "run.device=cpu", "diag.interval=0", f"sched.epoch_shift={shift}",
                             "--run-epochs", "2", config=RECIPE, model="resnet10t", classes=10, img_size=32,
                             train_size=24, val_size=8, epochs=3, lr=None, alpha=None)
        assert cli.main(args) == 0
        weights.append(final_weights(run_dir))
    assert "fc.weight" in differing(*weights)


@pytest.mark.slow
def test_val_interpolation_reaches_the_val_loader(tmp_path, jpeg_folder):
    """data.val_interpolation changes no weight, only what validation sees: the val loss of the same model."""
    from pgt_train.writers import read_summary
    losses = []
    for interpolation in ("bilinear", "bicubic"):
        run_dir = tmp_path / interpolation
        args = tiny_run_args(run_dir, "run.device=cpu", "diag.interval=0", f"data.val_interpolation={interpolation}",
                             root=jpeg_folder, model="resnet10t", classes=3, img_size=16, epochs=1, warmup=0)
        assert cli.main(args) == 0
        losses.append(float(read_summary(run_dir / "summary.csv")[-1]["val_loss"]))
    assert losses[0] != losses[1]


@pytest.mark.slow
def test_train_crop_reaches_the_train_loader(tmp_path, jpeg_folder):
    """data.train_crop: CIFAR's padded random crop trains on other pixels than RandomResizedCrop."""
    weights = []
    for crop in ("random_resized", "pad_crop"):
        run_dir = tmp_path / crop
        args = tiny_run_args(run_dir, "run.device=cpu", "diag.interval=0", f"data.train_crop={crop}",
                             root=jpeg_folder, model="resnet10t", classes=3, img_size=16, epochs=1, warmup=0)
        assert cli.main(args) == 0
        weights.append(final_weights(run_dir))
    assert "fc.weight" in differing(*weights)


def tiny_config(*overrides: str, **kwargs):
    from pgt_train import config
    argv = tiny_run_args(None, *overrides, **kwargs)
    assert argv[:2] == ["--config", "/dev/null"]
    return config.load("/dev/null", argv[2:])


def test_decoder_reaches_the_nvjpeg_loader(jpeg_folder):
    """data.decoder picks the nvjpeg loader's JPEG decoder (auto: the first that imports, torchvision here)."""
    from pgt_train import trainer
    from pgt_train.dist import DistInfo
    for decoder, expected in (("pil", "pil"), ("torchvision", "torchvision"), ("auto", "torchvision")):
        cfg = tiny_config("data.loader=nvjpeg", f"data.decoder={decoder}", root=jpeg_folder, model="resnet10t",
                          classes=3)
        setup = trainer.build_setup(cfg, DistInfo())
        assert setup.train_loader.loader.decoder.backend == expected
        assert setup.val_loader.loader.decoder.backend == expected


class Built(Exception):
    pass


@pytest.mark.parametrize("amp, expected", [("fp16", torch.float16), ("bf16", torch.float32), ("none", torch.float32)])
def test_fp16_autocast_asks_the_device_loaders_for_fp16_images(monkeypatch, amp, expected):
    """On CUDA with amp.dtype fp16, the loaders that normalise on the device (nvjpeg, DALI) emit fp16 themselves."""
    from pgt_train import data, trainer
    from pgt_train.dist import DistInfo
    seen = {}

    def build_loaders(*args, **kwargs):
        seen.update(kwargs)
        raise Built  # the model is on the CPU: stop before anything moves to CUDA
    monkeypatch.setattr(data, "build_loaders", build_loaders)
    with pytest.raises(Built):
        trainer.build_setup(tiny_config(f"amp.dtype={amp}", model="resnet10t"), DistInfo(device=torch.device("cuda")))
    assert seen["dtype"] == expected and seen["channels_last"] is True


def test_nvimgcodec_decodes_the_nvjpeg_loaders_batches(jpeg_folder):
    """data.decoder nvimgcodec (opt-in) through the whole nvjpeg loader on the CPU: a normalised batch."""
    pytest.importorskip("nvidia.nvimgcodec", reason="nvidia-nvimgcodec-cu12 is not installed (the DALI extra brings it)")
    from pgt_train import trainer
    from pgt_train.dist import DistInfo
    cfg = tiny_config("data.loader=nvjpeg", "data.decoder=nvimgcodec", root=jpeg_folder, model="resnet10t",
                      classes=3, img_size=32, batch=6)
    setup = trainer.build_setup(cfg, DistInfo())
    assert setup.train_loader.loader.decoder.backend == "nvimgcodec"
    setup.train_loader.set_epoch(0)
    images, targets = next(iter(setup.train_loader))
    assert images.shape == (6, 3, 32, 32) and images.dtype == torch.float32 and targets.shape == (6,)
    assert images.abs().max() < 5 and images.std() > 0.1  # normalised pixels, not zeros
