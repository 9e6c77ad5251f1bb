"""Tests for the procedural demo ImageFolder dataset (pgt_train.data.demo)."""

import json

import pytest
from PIL import Image
from torchvision.datasets import ImageFolder

from pgt_train.data.demo import LEGACY_PARAMS_FILE, MARKER, class_names, main, make_demo_dataset
from tests.helpers import make_jpeg_folder, run_cli

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
    marker = json.loads((root / MARKER).read_text())
    assert marker["params"]["seed"] == 0
    assert sorted(marker["files"]) == sorted([MARKER, *jpeg_bytes(root)])  # exactly what it wrote
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
    assert json.loads((root / MARKER).read_text())["params"]["val_per_class"] == 3


def test_missing_files_are_regenerated(tmp_path):
    root = make_demo_dataset(tmp_path / "demo", **TINY)
    expected = jpeg_bytes(root)
    for path in (root / "train" / EXPECTED_CLASSES[1]).iterdir():
        path.unlink()
    make_demo_dataset(tmp_path / "demo", **TINY)
    assert jpeg_bytes(root) == expected


def tree(root):
    """{relative path: bytes or the link target} of everything under root, folders included."""
    return {p.relative_to(root).as_posix(): (str(p.readlink()) if p.is_symlink() else
                                              p.read_bytes() if p.is_file() else "dir")
            for p in sorted(root.rglob("*"))}


def test_refuses_a_foreign_folder(tmp_path):
    (tmp_path / "notes.txt").write_text("not a dataset")
    with pytest.raises(FileExistsError, match="notes.txt"):
        make_demo_dataset(tmp_path, **TINY)
    assert tree(tmp_path) == {"notes.txt": b"not a dataset"}


@pytest.mark.parametrize("addition, reported", [
    ("train/c00_circle/mine.jpg", "train/c00_circle/mine.jpg"), ("val/extra_class/x.jpg", "val/extra_class"),
    ("README", "README"), ("link", "link")])
def test_new_parameters_never_delete_what_the_generator_did_not_write(tmp_path, addition, reported):
    root = make_demo_dataset(tmp_path / "demo", **TINY)
    if addition == "link":  # a symlink is never the generator's, even to one of its own files
        (root / "link").symlink_to(root / "train")
    else:
        (root / addition).parent.mkdir(exist_ok=True)
        (root / addition).write_bytes(b"user data")
    before = tree(root)
    with pytest.raises(FileExistsError, match=f"it holds {reported},"):
        make_demo_dataset(root, **{**TINY, "seed": 5})
    assert tree(root) == before
    assert [p.name for p in tmp_path.iterdir()] == ["demo"]  # no temporary folder left behind


def test_legacy_folder_is_reused_then_replaced(tmp_path):
    """A dataset from before the marker (demo_params.json) is recognised by its exact file list."""
    root = make_demo_dataset(tmp_path / "demo", **TINY)
    marker = json.loads((root / MARKER).read_text())
    (root / MARKER).unlink()
    (root / LEGACY_PARAMS_FILE).write_text(json.dumps(marker["params"]))
    before = tree(root)
    make_demo_dataset(root, **TINY)
    assert tree(root) == before
    make_demo_dataset(root, **{**TINY, "val_per_class": 1})
    assert not (root / LEGACY_PARAMS_FILE).exists() and len(list((root / "val").rglob("*.jpg"))) == 3


@pytest.mark.slow
def test_demo_recipe_refuses_an_imagenet_folder(tmp_path):
    """The demo recipe pointed at a real dataset (train/ and val/ only) exits 2 and changes nothing."""
    data = make_jpeg_folder(tmp_path / "imagenet", train=2, val=1)
    before = tree(data)
    result = run_cli("--config", "configs/demo.yaml", f"data.root={data}", f"run.dir={tmp_path / 'run'}")
    assert result.returncode == 2, result.stderr
    assert "is not a demo folder" in result.stderr and "nothing in it was changed" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert tree(data) == before and sorted(p.name for p in tmp_path.iterdir()) == ["imagenet"]


def test_cli_reports_counts(tmp_path, capsys):
    main([str(tmp_path / "demo"), "--seed", "3", "--classes", "2", "--train-per-class", "3",
          "--val-per-class", "1", "--image-size", "16", "--workers", "0"])
    out = capsys.readouterr().out
    assert "6 train + 2 val images, 2 classes" in out
