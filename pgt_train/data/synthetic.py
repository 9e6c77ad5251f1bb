"""Synthetic images: sample i is a pure function of (seed, i), for benchmarks and exactness tests.

Labels are drawn with the image, so the task is random noise with random labels: only speed and
gradient bookkeeping are meaningful on it, never accuracy.
"""
from __future__ import annotations

import torch
from torch.utils.data import Dataset


class SyntheticImages(Dataset):
    def __init__(self, size: int, *, num_classes: int, img_size: int, seed: int):
        self.size, self.num_classes, self.img_size, self.seed = size, num_classes, img_size, seed

    def __len__(self) -> int:
        return self.size

    def __getitem__(self, key):
        index, _epoch = key  # the same sample every epoch: no augmentation
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + index)
        image = torch.randint(0, 256, (3, self.img_size, self.img_size), generator=g, dtype=torch.uint8)
        return image, int(torch.randint(self.num_classes, (1,), generator=g))
