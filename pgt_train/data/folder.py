"""ImageNet-layout folders (<root>/train/<class>/*, <root>/val/<class>/*) with the standard transforms."""
from __future__ import annotations

from pathlib import Path

import torch
from torchvision import datasets
from torchvision.transforms import v2

from pgt_train.data.torch_loader import CorruptSample, sample_seed
from pgt_train.errors import UserError


def train_transform(img_size: int, crop_scale, crop_ratio) -> v2.Compose:
    return v2.Compose([
        v2.RandomResizedCrop(img_size, scale=crop_scale, ratio=crop_ratio, antialias=True),
        v2.RandomHorizontalFlip(),
        v2.PILToTensor(),  # uint8 CHW; normalised on the device
    ])


def val_transform(img_size: int, val_resize: int | None) -> v2.Compose:
    resize = val_resize or round(img_size * 256 / 224)  # 256 -> 224 for ImageNet, scaled with img_size
    return v2.Compose([v2.Resize(resize, antialias=True), v2.CenterCrop(img_size), v2.PILToTensor()])


class SeededImageFolder(datasets.ImageFolder):
    """ImageFolder whose keys are (index, epoch); the transform's random draws are seeded from them.

    PIL's loader converts grayscale, CMYK, RGBA and palette images (JPEG or PNG) to RGB. A file that
    cannot be decoded becomes a CorruptSample, which the loader drops from its batch and reports.
    """

    def __init__(self, root: Path, transform, seed: int):
        super().__init__(str(root), transform=transform)
        self.seed = seed

    def __getitem__(self, key):
        index, epoch = key
        path, target = self.samples[index]
        try:
            image = self.loader(path)
        except (OSError, SyntaxError, ValueError) as e:  # PIL: truncated, unidentified or malformed files
            return CorruptSample(path, f"{type(e).__name__}: {e}")
        with torch.random.fork_rng(devices=[]):  # leaves the caller's RNG untouched (workers=0)
            torch.manual_seed(sample_seed(self.seed, epoch, index))
            image = self.transform(image)
        return image, target


def _class_folders(split_dir: Path) -> list[str]:
    return sorted(p.name for p in split_dir.iterdir() if p.is_dir())


def check_layout(root: Path, num_classes: int) -> list[str]:
    """The class list, or a UserError that says what is wrong with the folder and how to fix it."""
    if not root.is_dir():
        raise UserError(f"data.root: folder not found: {root} (expected {root}/train/<class>/*.jpg and {root}/val/...)")
    splits = {}
    for split in ("train", "val"):
        split_dir = root / split
        if not split_dir.is_dir():
            raise UserError(f"data.root: {split_dir} is missing (expected ImageNet layout: {split}/<class>/<image>)")
        classes = _class_folders(split_dir)
        if not classes:
            raise UserError(f"data.root: {split_dir} has no class folders")
        splits[split] = classes
    if splits["train"] != splits["val"]:
        only_train = sorted(set(splits["train"]) - set(splits["val"]))[:3]
        only_val = sorted(set(splits["val"]) - set(splits["train"]))[:3]
        raise UserError(f"data.root: train/ and val/ have different classes "
                        f"(only in train: {only_train}, only in val: {only_val})")
    if len(splits["train"]) != num_classes:
        raise UserError(f"model.num_classes is {num_classes} but {root}/train has {len(splits['train'])} class "
                        f"folders; set model.num_classes={len(splits['train'])}")
    return splits["train"]


def build_datasets(root: str, *, num_classes: int, img_size: int, val_resize: int | None, crop_scale, crop_ratio,
                   seed: int) -> tuple[SeededImageFolder, SeededImageFolder]:
    root_path = Path(root).expanduser()
    check_layout(root_path, num_classes)
    try:
        train = SeededImageFolder(root_path / "train", train_transform(img_size, crop_scale, crop_ratio), seed)
        val = SeededImageFolder(root_path / "val", val_transform(img_size, val_resize), seed)
    except FileNotFoundError as e:  # torchvision: a class folder without any image file
        raise UserError(f"data.root: {e}") from None
    return train, val
