"""The shared benchmark pieces that decide something: the JPEG generator's layout, sizes and refusal to
overwrite, the loader pass's image count, and when a run folder counts as finished. No timing is asserted."""
import numpy as np
import pytest
import torch
from PIL import Image
from torchvision.datasets import ImageFolder

from pgt_train import benchmarking
from pgt_train.writers import run_finished


def test_jpeg_folder_layout_sizes_and_determinism(tmp_path):
    root = benchmarking.make_jpeg_folder(tmp_path / "a", classes=2, train=3, val=1, sides=(30, 50), grain=8)
    folder = ImageFolder(str(root / "train"))
    assert folder.classes == ["n00000000", "n00000001"] and len(folder) == 6
    assert len(ImageFolder(str(root / "val"))) == 2
    for path, _ in folder.samples:
        with Image.open(path) as image:
            assert image.format == "JPEG" and all(30 <= side < 50 for side in image.size)
    again = benchmarking.make_jpeg_folder(tmp_path / "b", classes=2, train=3, val=1, sides=(30, 50), grain=8)
    first = sorted(p.relative_to(root) for p in root.rglob("*.jpg"))
    assert [(root / p).read_bytes() for p in first] == [(again / p).read_bytes() for p in first]


def test_jpeg_folder_classes_carry_their_colour(tmp_path):
    root = benchmarking.make_jpeg_folder(tmp_path, classes=["red", "green"], train=1, val=1, sides=24,
                                         colours=[(220, 20, 20), (20, 220, 20)], noise=10.0)
    for name, channel in (("red", 0), ("green", 1)):
        with Image.open(root / "train" / name / "train_0.jpg") as image:
            assert image.size == (24, 24)
            assert int(np.asarray(image).reshape(-1, 3).mean(0).argmax()) == channel


def test_jpeg_folder_never_writes_over_files(tmp_path):
    benchmarking.make_jpeg_folder(tmp_path, classes=1, train=1, val=1)
    before = (tmp_path / "train" / "n00000000" / "train_0.jpg").read_bytes()
    with pytest.raises(FileExistsError, match="already holds files"):
        benchmarking.make_jpeg_folder(tmp_path, classes=1, train=1, val=1, seed=1)
    assert (tmp_path / "train" / "n00000000" / "train_0.jpg").read_bytes() == before


class CountingLoader:
    """Two batches of 3 images; remembers the epochs it was set to."""

    def __init__(self):
        self.epochs = []

    def set_epoch(self, epoch, skip_batches=0):
        self.epochs.append(epoch)

    def __iter__(self):
        return iter([(torch.zeros(3, 3, 4, 4), torch.zeros(3))] * 2)

    def __len__(self):
        return 2


def test_loader_rates_time_the_passes_after_the_warmup():
    loader = CountingLoader()
    rates = benchmarking.loader_rates(loader, passes=2, device=torch.device("cpu"), warmup=1)
    assert len(rates) == 2 and all(r > 0 for r in rates)
    assert loader.epochs == [0, 1, 2]


def test_spread_is_min_median_max():
    assert benchmarking.spread([3.0, 1.0, 2.0, 10.0]) == (1.0, 2.5, 10.0)
    assert "1.5" in benchmarking.spread_row("x", [1.0, 1.5, 2.0], "ms")


def test_run_finished_needs_the_last_epochs_row(tmp_path):
    assert not run_finished(tmp_path, 2)  # no summary.csv yet
    (tmp_path / "summary.csv").write_text("epoch,lr\n1,0.1\n")
    assert not run_finished(tmp_path, 2)
    (tmp_path / "summary.csv").write_text("epoch,lr\n1,0.1\n2,0.0\ngarbage,row\n")
    assert run_finished(tmp_path, 2)
