"""Bad data as users meet it: corrupt files mid-training, odd image modes, broken folder layouts."""
import csv
import shutil

import numpy as np
import pytest
from PIL import Image

from tests.conftest import make_jpeg_folder, run_cli


def tiny(root, run_dir, *extra):
    return ["--config", "/dev/null", f"data.root={root}", "model.name=resnet18", "model.num_classes=3",
            "data.batch_size=6", "data.img_size=32", "data.workers=1", "sched.epochs=1", "sched.warmup_epochs=0",
            "optim.lr=0.05", "run.progress=false", "diag.interval=0", f"run.dir={run_dir}", *extra]


@pytest.fixture
def folder(jpeg_folder, tmp_path):
    root = tmp_path / "data"
    shutil.copytree(jpeg_folder, root)
    return root


def test_corrupt_and_truncated_images_are_skipped_and_counted(folder, tmp_path):
    good = (folder / "train" / "a_round" / "train_0.jpg").read_bytes()
    (folder / "train" / "a_round" / "zz_truncated.jpg").write_bytes(good[: len(good) // 3])
    (folder / "train" / "b_square" / "zz_garbage.jpg").write_bytes(b"\x00not a jpeg at all" * 10)
    result = run_cli(*tiny(folder, tmp_path / "run", "data.batch_size=4"))
    assert result.returncode == 0, result.stderr
    assert "skipped corrupt image" in result.stderr
    assert "zz_truncated.jpg" in result.stderr and "zz_garbage.jpg" in result.stderr
    row = next(csv.DictReader(open(tmp_path / "run" / "summary.csv")))
    assert int(row["corrupt_images"]) == 2  # 20 train files, batch 4: all five batches run, both files met
    assert int(row["val_images"]) == 9


def test_corrupt_image_can_be_fatal(folder, tmp_path):
    (folder / "val" / "c_stripe" / "broken.jpg").write_bytes(b"garbage")
    result = run_cli(*tiny(folder, tmp_path / "run", "data.skip_corrupt=false"))
    assert result.returncode == 2
    assert "corrupt image" in result.stderr and "broken.jpg" in result.stderr and "Traceback" not in result.stderr


def test_grayscale_cmyk_rgba_and_png_are_converted(folder, tmp_path):
    rgb = np.random.default_rng(0).integers(0, 255, (50, 60, 3), dtype=np.uint8)
    target = folder / "train" / "a_round"
    Image.fromarray(rgb).convert("L").save(target / "gray.jpg")
    Image.fromarray(rgb).convert("CMYK").save(target / "cmyk.jpg")
    Image.fromarray(rgb).convert("RGBA").save(target / "rgba.png")
    Image.fromarray(rgb).convert("P").save(target / "palette.png")
    result = run_cli(*tiny(folder, tmp_path / "run", "data.batch_size=3"))
    assert result.returncode == 0, result.stderr
    assert "skipped" not in result.stderr
    row = next(csv.DictReader(open(tmp_path / "run" / "summary.csv")))
    assert int(row["corrupt_images"]) == 0


@pytest.mark.parametrize("breakage, message", [
    ("empty_root", "train is missing"),
    ("empty_class", "Found no valid file for the classes"),
    ("class_mismatch", "train/ and val/ have different classes"),
])
def test_broken_layouts_exit_2_with_one_line(folder, tmp_path, breakage, message):
    if breakage == "empty_root":
        shutil.rmtree(folder)
        folder.mkdir()
    elif breakage == "empty_class":
        for f in (folder / "train" / "a_round").iterdir():
            f.unlink()
    else:
        (folder / "val" / "c_stripe").rename(folder / "val" / "d_other")
    result = run_cli(*tiny(folder, tmp_path / "run"))
    assert result.returncode == 2, result.stderr
    assert message in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and "Traceback" not in result.stderr
    assert not (tmp_path / "run").exists()
