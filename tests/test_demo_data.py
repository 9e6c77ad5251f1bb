"""Tests for the procedural demo ImageFolder dataset (pgt_train.data.demo)."""

import json

import pytest
from PIL import Image
from torchvision.datasets import ImageFolder

from pgt_train.data.demo import PARAMS_FILE, class_names, main, make_demo_dataset

# 3 classes x (4 train + 2 val) tiny images: the whole file runs in a few seconds.
TINY = dict(num_classes=3, train_per_class=4, val_per_class=2, image_size=24, workers=0)
EXPECTED_CLASSES = ["c00_circle", "c01_square", "c02_triangle"]


def jpeg_bytes(root):
    """{relative path: file bytes} of every JPEG under root."""
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*.jpg"))}


def test_layout_counts_and_real_jpegs(tmp_path):
    root = make_demo_dataset(tmp_path / "demo", seed=0, **TINY)
    assert root == tmp_path / "demo"
    for split, per_class in (("train", 4), ("val", 2)):
        assert sorted(p.name for p in (root / split).iterdir()) == EXPECTED_CLASSES
        for name in EXPECTED_CLASSES:
            files = sorted((root / split / name).iterdir())
            assert len(files) == per_class
            for path in files:
                with Image.open(path) as img:
                    assert (img.format, img.mode, img.size) == ("JPEG", "RGB", (24, 24))
    assert json.loads((root / PARAMS_FILE).read_text())["seed"] == 0
    # No temp dirs left beside the dataset.
    assert [p.name for p in tmp_path.iterdir()] == ["demo"]


def test_imagefolder_reads_classes_in_order(tmp_path):
    root = make_demo_dataset(tmp_path / "demo", **TINY)
    train = ImageFolder(root / "train")
    assert train.classes == EXPECTED_CLASSES == class_names(3)
    assert [label for _, label in train.samples] == [0] * 4 + [1] * 4 + [2] * 4
    img, label = ImageFolder(root / "val")[5]
    assert label == 2 and img.size == (24, 24)


def test_deterministic_per_seed_and_worker_count(tmp_path):
    a = jpeg_bytes(make_demo_dataset(tmp_path / "a", seed=1, **TINY))
    b = jpeg_bytes(make_demo_dataset(tmp_path / "b", seed=1, **{**TINY, "workers": 2}))
    c = jpeg_bytes(make_demo_dataset(tmp_path / "c", seed=2, **TINY))
    assert a == b
    assert a.keys() == c.keys()
    assert all(a[k] != c[k] for k in a)


def test_second_call_reuses_cache(tmp_path):
    root = make_demo_dataset(tmp_path / "demo", **TINY)
    mtimes = {p: p.stat().st_mtime_ns for p in root.rglob("*")}
    make_demo_dataset(tmp_path / "demo", **TINY)
    assert {p: p.stat().st_mtime_ns for p in root.rglob("*")} == mtimes


def test_changed_params_regenerate(tmp_path):
    make_demo_dataset(tmp_path / "demo", **TINY)
    root = make_demo_dataset(tmp_path / "demo", **{**TINY, "val_per_class": 3})
    assert len(list((root / "val").rglob("*.jpg"))) == 9
    assert json.loads((root / PARAMS_FILE).read_text())["val_per_class"] == 3


def test_half_written_dataset_is_regenerated(tmp_path):
    root = make_demo_dataset(tmp_path / "demo", **TINY)
    expected = jpeg_bytes(root)
    # Simulate a killed run: params file missing, one class folder truncated.
    (root / PARAMS_FILE).unlink()
    for path in (root / "train" / EXPECTED_CLASSES[1]).iterdir():
        path.unlink()
    make_demo_dataset(tmp_path / "demo", **TINY)
    assert jpeg_bytes(root) == expected
    assert (root / PARAMS_FILE).exists()


def test_refuses_to_overwrite_foreign_directory(tmp_path):
    (tmp_path / "notes.txt").write_text("not a dataset")
    with pytest.raises(FileExistsError):
        make_demo_dataset(tmp_path, **TINY)
    assert (tmp_path / "notes.txt").exists()


def test_cli_reports_counts(tmp_path, capsys):
    main([str(tmp_path / "demo"), "--seed", "3", "--classes", "2", "--train-per-class", "3",
          "--val-per-class", "1", "--image-size", "16", "--workers", "0"])
    out = capsys.readouterr().out
    assert "6 train + 2 val images, 2 classes" in out
