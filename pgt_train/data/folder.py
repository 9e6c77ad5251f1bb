"""ImageNet-layout folders (<root>/train/<class>/*, <root>/val/<class>/*) with the standard transforms.

Hostile folders are handled here: the scan follows symlinked folders but never into a loop, a folder it
has already scanned, or another class's folder; a file is opened only if it is a regular file (a FIFO
named .jpg would block a reader forever); and images PIL flags as decompression bombs are unreadable.
"""
from __future__ import annotations

import contextlib
import os
import random
import stat
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torchvision import datasets
from torchvision.datasets.folder import IMG_EXTENSIONS
from torchvision.transforms import v2

import pgt_train.data.cpu_crop as cpu_crop
from pgt_train.data.torch_loader import REPLACEMENT_TRIES, CorruptSample, sample_rng, sample_seed
from pgt_train.errors import UserError

def train_transform(img_size: int, crop_scale, crop_ratio, train_crop: str = "random_resized") -> v2.Compose:
    """random_resized: ImageNet's RandomResizedCrop; pad_crop: CIFAR's random crop of the image zero-padded by
    img_size / 8 (4 px at 32, the authors' ext_dataloaders.py:676), both with a horizontal flip."""
    if train_crop == "pad_crop":
        crop = v2.RandomCrop(img_size, padding=img_size // 8)
    elif train_crop == "random_resized":
        crop = v2.RandomResizedCrop(img_size, scale=crop_scale, ratio=crop_ratio, antialias=True)
    else:
        raise ValueError(f"unknown data.train_crop '{train_crop}' (valid: random_resized, pad_crop)")
    return v2.Compose([crop, v2.RandomHorizontalFlip(), v2.PILToTensor()])  # uint8 CHW; normalised on the device


INTERPOLATIONS = {"bilinear": v2.InterpolationMode.BILINEAR, "bicubic": v2.InterpolationMode.BICUBIC}


def val_transform(img_size: int, val_resize: int | None, interpolation: str = "bilinear") -> v2.Compose:
    """Resize the short side (PIL's filter `interpolation`, as timm's eval transform), center crop img_size."""
    resize = val_resize or round(img_size * 256 / 224)  # 256 -> 224 for ImageNet, scaled with img_size
    return v2.Compose([v2.Resize(resize, interpolation=INTERPOLATIONS[interpolation], antialias=True),
                       v2.CenterCrop(img_size), v2.PILToTensor()])


class UnreadableImage(Exception):
    """A file that is not an image we can decode safely; the message says why."""


def _check_regular(path: str) -> None:
    mode = os.stat(path).st_mode  # follows symlinks: what open() would reach
    if not stat.S_ISREG(mode):  # FIFO, socket, device: opening could block or have side effects
        raise UnreadableImage("not a regular file")


@contextlib.contextmanager
def _unreadable_on_error():
    """PIL raises many types on hostile files (OSError, SyntaxError, struct.error, ...): one type, with the why."""
    try:
        yield
    except UnreadableImage:
        raise
    except Exception as e:  # noqa: BLE001
        raise UnreadableImage(f"{type(e).__name__}: {e}") from None


def read_rgb(path: str) -> Image.Image:
    """The file at `path` as an RGB PIL image (grayscale, CMYK, RGBA, palette converted), or UnreadableImage."""
    with _unreadable_on_error():
        _check_regular(path)
        with warnings.catch_warnings():
            # Above Image.MAX_IMAGE_PIXELS PIL only warns; decoding would take minutes and gigabytes.
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with open(path, "rb") as f:
                return Image.open(f).convert("RGB")


def read_bytes(path: str) -> bytes:
    """The bytes of the regular file at `path`, or UnreadableImage."""
    with _unreadable_on_error():
        _check_regular(path)
        with open(path, "rb") as f:
            return f.read()


def _inside(path: str, folder: str) -> bool:
    return path == folder or path.startswith(folder.rstrip(os.sep) + os.sep)


def _scan_class(class_dir: str, other_classes: list[str], visited: set[str], warn: bool = True) -> list[str]:
    """Files under one class folder, sorted, following symlinked folders except into a loop, a folder
    already scanned, or another class's folder (whose images would get this class's label).

    visited: real paths of the folders scanned so far in this split (the class folders to begin with).
    warn: print a warning for each folder skipped (off for check_folder's look ahead: the build warns).
    """
    files, class_real = [], os.path.realpath(class_dir)
    for root, dirs, names in os.walk(class_dir, followlinks=True):
        keep = []
        for d in sorted(dirs):
            real = os.path.realpath(os.path.join(root, d))
            clash = next((c for c in other_classes if _inside(real, c) or _inside(c, real)), None)
            if real in visited or _inside(class_real, real) or clash:
                why = (f"it overlaps class folder {clash}" if clash
                       else "it was already scanned (a symlink loop or a duplicate)")
                if warn:
                    print(f"warning: data.root: skipped folder {os.path.join(root, d)} -> {real}: {why}",
                          file=sys.stderr)
                continue
            visited.add(real)
            keep.append(d)
        dirs[:] = keep
        files += [os.path.join(root, n) for n in names]
    return sorted(files)


def class_files(directory, classes, extensions, *, warn: bool = True):
    """Yields (class, its image files sorted) class by class in sorted order, with the loop-safe scan; lazily, so
    a caller that needs one file lists one class folder."""
    real_dirs = {c: os.path.realpath(os.path.join(directory, c)) for c in classes}
    visited = set(real_dirs.values())
    for name in sorted(classes):
        others = [d for c, d in real_dirs.items() if c != name]
        yield name, [f for f in _scan_class(os.path.join(directory, name), others, visited, warn)
                     if datasets.folder.has_file_allowed_extension(f, extensions)]


def list_samples(directory, class_to_idx: dict, extensions, *, allow_empty: bool = False,
                 warn: bool = True) -> list[tuple[str, int]]:
    """(path, class index) of every image file, class by class in sorted order, with the loop-safe scan."""
    samples, empty = [], []
    for name, files in class_files(directory, class_to_idx, extensions, warn=warn):
        empty += [] if files else [name]
        samples += [(f, class_to_idx[name]) for f in files]
    if empty and not allow_empty:
        raise FileNotFoundError(f"Found no valid file for the classes {', '.join(empty)}. "
                                f"Supported extensions are: {', '.join(extensions)}")
    return samples


class SeededImageFolder(datasets.ImageFolder):
    """ImageFolder whose keys are (index, epoch); the transform's random draws are seeded from them.

    A file that cannot be read becomes a CorruptSample, which the loader reports and counts. With
    `replace_unreadable` (training with data.skip_corrupt, set by TorchLoader) the CorruptSample carries a
    random readable image in its place, so a batch keeps its size: no BatchNorm batch of one, no empty
    batch, and every DDP rank still runs the same number of steps.
    """

    def __init__(self, root: Path, transform, seed: int):
        super().__init__(str(root), transform=transform, loader=read_rgb)
        self.seed = seed
        self.replace_unreadable = False

    @staticmethod
    def make_dataset(directory, class_to_idx, extensions=None, is_valid_file=None, allow_empty=False):
        """torchvision's listing, but with the loop-safe scan (its os.walk follows every symlink)."""
        return list_samples(directory, class_to_idx, extensions, allow_empty=allow_empty)

    def __getitem__(self, key):
        index, epoch = key
        path, target = self.samples[index]
        try:
            return self._load_transformed(path, target, epoch, index)
        except UnreadableImage as e:
            corrupt = CorruptSample(path, str(e))
        if not self.replace_unreadable:
            return corrupt
        replacement = self._random_readable(epoch, index)
        return corrupt if replacement is None else corrupt._replace(replacement=replacement)

    def _random_readable(self, epoch: int, index: int):
        """(image, target) of a readable sample drawn with the seed of (epoch, index) (deterministic), cropped
        with that sample's seed, or None."""
        draw = random.Random(sample_seed(self.seed, epoch, index))
        for _ in range(REPLACEMENT_TRIES):
            path, target = self.samples[draw.randrange(len(self.samples))]
            try:
                return self._load_transformed(path, target, epoch, index)
            except UnreadableImage:
                continue  # counted when its own index comes up
        return None

    def _load_transformed(self, path: str, target: int, epoch: int, index: int):
        """(image, target) of one file, transformed with the seed of (epoch, index); UnreadableImage."""
        image = self.loader(path)
        with sample_rng(sample_seed(self.seed, epoch, index)):
            return self.transform(image), target


class TensorCropFolder(SeededImageFolder):
    """The training folder through cpu_crop.TrainCrop (bytes -> uint8 tensor crop, no PIL for plain JPEGs): the
    same files, keys, seeds, crop boxes, flips and replacements as SeededImageFolder with train_transform."""

    def __init__(self, root: Path, crop: cpu_crop.TrainCrop, seed: int):
        super().__init__(root, transform=None, seed=seed)
        self.crop = crop

    def _load_transformed(self, path: str, target: int, epoch: int, index: int):
        data = read_bytes(path)
        generator = torch.Generator().manual_seed(sample_seed(self.seed, epoch, index))
        return self.crop(data, generator, fallback=lambda: np.array(read_rgb(path))), target


def _class_folders(split_dir: Path) -> list[str]:
    return sorted(p.name for p in split_dir.iterdir() if p.is_dir())


def _check_distinct(root: Path, splits: dict[str, list[str]]) -> None:
    """No class folder may resolve (symlinks followed) to, into or around another: within a split its images
    would be trained under two labels; across splits validation would score training images."""
    real = sorted((tuple(Path(os.path.realpath(root / split / c)).parts), f"{split}/{c}")
                  for split, classes in splits.items() for c in classes)
    # Sorted by path components, a folder is directly followed by what lies inside it: adjacent pairs suffice.
    for (outer, a), (inner, b) in zip(real, real[1:]):
        if inner[:len(outer)] != outer:
            continue
        why = ("validation would score training images" if a.split("/")[0] != b.split("/")[0] else
               "its images would be trained under two labels")
        what = (f"{root / min(a, b)} and {root / max(a, b)} are the same folder ({os.path.join(*inner)})"
                if inner == outer else f"{root / b} resolves to {os.path.join(*inner)}, inside {root / a}")
        raise UserError(f"data.root: {what}: {why}; give each class folder its own images")


def check_layout(root: Path, num_classes: int) -> list[str]:
    """The class list, or a UserError that says what is wrong with the folder and how to fix it."""
    layout = f"expected {root}/train/<class>/*.jpg and {root}/val/..."
    if root.exists() and not root.is_dir():
        raise UserError(f"data.root: {root} is a file, not a folder; point data.root at the folder that holds "
                        f"train/ and val/ ({layout})")
    if not root.is_dir():
        raise UserError(f"data.root: folder not found: {root} ({layout})")
    splits = {}
    for split in ("train", "val"):
        split_dir = root / split
        if not split_dir.is_dir():
            raise UserError(f"data.root: {split_dir} is missing (expected ImageNet layout: {split}/<class>/<image>)")
        classes = _class_folders(split_dir)
        if not classes:
            raise UserError(f"data.root: {split_dir} has no class folders")
        splits[split] = classes
    _check_distinct(root, splits)
    if splits["train"] != splits["val"]:
        only_train = sorted(set(splits["train"]) - set(splits["val"]))[:3]
        only_val = sorted(set(splits["val"]) - set(splits["train"]))[:3]
        raise UserError(f"data.root: train/ and val/ have different classes "
                        f"(only in train: {only_train}, only in val: {only_val})")
    if len(splits["train"]) < 2:
        raise UserError(f"data.root: {root}/train has one class folder ({splits['train'][0]}); classification needs "
                        f"at least 2 class folders, one per class, in train/ and in val/")
    if len(splits["train"]) != num_classes:
        raise UserError(f"model.num_classes is {num_classes} but {root}/train has {len(splits['train'])} class "
                        f"folders; set model.num_classes={len(splits['train'])}")
    return splits["train"]


def _empty_classes(split_dir: Path, classes: list[str]) -> list[str]:
    """The classes class_files would list no image file for. A look at each folder's own entries (what os.walk
    lists as a file: anything not a folder) settles a sound folder; the full scan runs only if one holds none."""
    def top_level_image(class_dir: Path) -> bool:
        try:
            with os.scandir(class_dir) as entries:
                return any(not e.is_dir() and datasets.folder.has_file_allowed_extension(e.name, IMG_EXTENSIONS)
                           for e in entries)
        except OSError:  # unreadable folder: the full scan (os.walk) skips it too, and the class is empty
            return False
    suspects = [c for c in classes if not top_level_image(split_dir / c)]
    if not suspects:
        return []
    listed = dict(class_files(split_dir, classes, IMG_EXTENSIONS, warn=False))
    return [c for c in suspects if not listed[c]]


def check_readable(split_dir: Path, classes: list[str]) -> None:
    """UserError unless the split holds at least one readable image. Files are tried in the loader's order and the
    first readable one ends the check: one class folder listed and one decode for a sound folder, a pass over
    every file for a broken one."""
    empty = _empty_classes(split_dir, classes)
    if empty:  # torchvision's words, as build_datasets says them
        raise UserError(f"data.root: Found no valid file for the classes {', '.join(empty)} in {split_dir}. "
                        f"Supported extensions are: {', '.join(IMG_EXTENSIONS)}")
    first_error, count = None, 0
    for _, files in class_files(split_dir, classes, IMG_EXTENSIONS, warn=False):
        for path in files:
            count += 1
            try:
                read_rgb(path)
                return
            except UnreadableImage as e:
                first_error = first_error or f"{path}: {e}"
    use = "nothing to score" if split_dir.name == "val" else "nothing to train on"
    raise UserError(f"data.root: none of the {count} image files under {split_dir} is readable (the first: "
                    f"{first_error}), so there is {use}; replace the files or point data.root at another folder")


def find_unreadable(paths, *, near: int, budget_s: float) -> tuple[str | None, int]:
    """("path (why)") of the unreadable file (read_rgb) nearest to index `near` of `paths`, searching outward for at
    most `budget_s` seconds, or None; and how many files were checked."""
    start, checked = time.monotonic(), 0
    near = min(max(near, 0), max(len(paths) - 1, 0))
    for step in range(2 * len(paths)):
        index = near + (step + 1) // 2 * (1 if step % 2 else -1)  # near, near+1, near-1, near+2, ...
        if not 0 <= index < len(paths):
            continue
        checked += 1
        try:
            read_rgb(paths[index])
        except UnreadableImage as e:
            return f"{paths[index]} ({e})", checked
        if time.monotonic() - start > budget_s:
            break
    return None, checked


def check_folder(root: Path, num_classes: int) -> None:
    """Everything about an image folder that can be told before a model is built: the layout, the class folders
    (distinct, as many as model.num_classes) and a readable image in train/ and in val/."""
    classes = check_layout(root, num_classes)
    for split in ("train", "val"):
        check_readable(root / split, classes)


TRAIN_PATHS = ("auto", "tensor", "pil")  # build_datasets(train_path=...): auto is tensor where simplejpeg imports


def _train_folder(root: Path, *, img_size: int, crop_scale, crop_ratio, seed: int, train_crop: str,
                  train_path: str) -> SeededImageFolder:
    """tensor: cpu_crop's path (RandomResizedCrop only); pil: train_transform on PIL images, today's reference."""
    if train_path not in TRAIN_PATHS:
        raise ValueError(f"unknown train_path {train_path!r} (valid: {', '.join(TRAIN_PATHS)})")
    if train_path == "auto":
        train_path = "tensor" if cpu_crop.available() and train_crop == "random_resized" else "pil"
    if train_path == "tensor":
        if train_crop != "random_resized":
            raise ValueError(f"train_path tensor crops random_resized only, not {train_crop!r}")
        return TensorCropFolder(root, cpu_crop.TrainCrop(img_size, scale=crop_scale, ratio=crop_ratio), seed)
    return SeededImageFolder(root, train_transform(img_size, crop_scale, crop_ratio, train_crop), seed)


def build_datasets(root: str, *, num_classes: int, img_size: int, val_resize: int | None, crop_scale, crop_ratio,
                   seed: int, val_interpolation: str = "bilinear", train_crop: str = "random_resized",
                   train_path: str = "auto") -> tuple[SeededImageFolder, SeededImageFolder]:
    """(train, val) folders. train_path: auto (tensor where simplejpeg imports, for random_resized), tensor
    (cpu_crop.TrainCrop) or pil (train_transform: the reference the tests and scripts/bench_loader.py compare)."""
    root_path = Path(root).expanduser()
    check_layout(root_path, num_classes)
    try:
        train = _train_folder(root_path / "train", img_size=img_size, crop_scale=crop_scale, crop_ratio=crop_ratio,
                              seed=seed, train_crop=train_crop, train_path=train_path)
        val = SeededImageFolder(root_path / "val", val_transform(img_size, val_resize, val_interpolation), seed)
    except FileNotFoundError as e:  # torchvision: a class folder without any image file
        raise UserError(f"data.root: {e}") from None
    return train, val
