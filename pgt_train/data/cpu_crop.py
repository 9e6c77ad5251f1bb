"""The CPU train path of data.loader torchvision: JPEG bytes -> RandomResizedCrop + flip as a uint8 tensor, no PIL.

Why: decoding with PIL, then cropping, resizing and converting PIL images cost about as much again as the decode
itself (docs/speed.md: the loader ran at 0.41-0.50 of the decoder's speed). Here, per sample:
  * the crop box and flip are drawn by torchvision's RandomResizedCrop algorithm (sample_crop, a copy that
    takes a torch.Generator seeded from (seed, epoch, index) instead of reseeding the global RNG): the same
    boxes and flips as v2.RandomResizedCrop + v2.RandomHorizontalFlip under folder.sample_rng, draw for draw
    (tests/test_decoders.py compares them, and their distribution over 10,000 draws);
  * simplejpeg (libjpeg-turbo, wheels for x86_64 and aarch64) decodes the whole file to an RGB array, the same
    pixels as PIL's decode (no DCT scaling: why in docs/data-loaders.md);
  * torch's uint8 antialiased bilinear resize (the same filter as PIL's BILINEAR resize that the PIL path
    uses, on channels-last uint8: its vectorised kernel) makes the img_size x img_size crop, then the flip.
Any file this path does not take as a plain JPEG (another format, CMYK/YCCK, more pixels than PIL's bomb
limit, or a decode error or libjpeg warning such as a truncated file) is decoded by folder.read_rgb's rules
instead: the same images, warnings and errors as the PIL path.
"""
from __future__ import annotations

import math
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

try:
    import simplejpeg
except ImportError:  # an optional speed-up: without it, folder.py keeps the PIL path (available())
    simplejpeg = None

JPEG_START = b"\xff\xd8"
PLAIN_COLORSPACES = ("YCbCr", "Gray", "RGB")  # what libjpeg converts to RGB as PIL does; CMYK/YCCK take PIL's path


def available() -> bool:
    """True when simplejpeg imports (the fast path); else folder.py builds the PIL path."""
    return simplejpeg is not None


def sample_crop(height: int, width: int, *, scale, ratio, generator: torch.Generator) -> tuple[int, int, int, int]:
    """(top, left, h, w): torchvision v2.RandomResizedCrop.make_params's algorithm and draws, from `generator`."""
    area, log_ratio = height * width, (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(10):
        target_area = area * torch.empty(1).uniform_(scale[0], scale[1], generator=generator).item()
        aspect = torch.exp(torch.empty(1).uniform_(*log_ratio, generator=generator)).item()  # float32, as torchvision
        w, h = int(round(math.sqrt(target_area * aspect))), int(round(math.sqrt(target_area / aspect)))
        if 0 < w <= width and 0 < h <= height:
            top = torch.randint(0, height - h + 1, size=(1,), generator=generator).item()
            left = torch.randint(0, width - w + 1, size=(1,), generator=generator).item()
            return top, left, h, w
    in_ratio = width / height  # fallback: the central crop, clamped to the ratio range
    if in_ratio < min(ratio):
        w, h = width, int(round(width / min(ratio)))
    elif in_ratio > max(ratio):
        h, w = height, int(round(height * max(ratio)))
    else:
        h, w = height, width
    return (height - h) // 2, (width - w) // 2, h, w


def sample_flip(generator: torch.Generator, p: float = 0.5) -> bool:
    """v2.RandomHorizontalFlip's draw: flips when a uniform draw is below p."""
    return bool(torch.rand(1, generator=generator) < p)


def plain_jpeg_shape(data: bytes) -> tuple[int, int] | None:
    """(height, width) of a JPEG this path decodes as PIL would; None for anything to leave to PIL."""
    if not data.startswith(JPEG_START):
        return None
    try:
        height, width, colorspace, _ = simplejpeg.decode_jpeg_header(data)
    except ValueError:
        return None
    limit = Image.MAX_IMAGE_PIXELS  # above it PIL warns of a decompression bomb, which read_rgb refuses
    if colorspace not in PLAIN_COLORSPACES or (limit is not None and height * width > limit):
        return None
    return height, width


def resized_crop(array: np.ndarray, box, size: int, flip: bool) -> torch.Tensor:
    """uint8 (3, size, size): the box of an (H, W, 3) uint8 array resized with antialiased bilinear, then flipped."""
    top, left, h, w = box
    # (1, 3, h, w) channels-last view of the box, no copy: the vectorised uint8 kernel reads it in place (a dense
    # copy first gave the same pixels and took 10 % longer: 258 against 231 µs per image, torch 2.14.1, 2026-12-06)
    crop = torch.from_numpy(array[top:top + h, left:left + w]).permute(2, 0, 1).unsqueeze(0)
    out = F.interpolate(crop, size=(size, size), mode="bilinear", antialias=True, align_corners=False)[0]
    return (out.flip(-1) if flip else out).contiguous()


class TrainCrop:
    """bytes -> uint8 (3, size, size): RandomResizedCrop(size, scale, ratio) + horizontal flip, seeded by a
    generator. `fallback()` gives the (H, W, 3) RGB array of a file left to PIL (folder.read_rgb: its errors)."""

    def __init__(self, size: int, *, scale, ratio):
        self.size, self.scale, self.ratio = size, tuple(scale), tuple(ratio)

    def __call__(self, data: bytes, generator: torch.Generator, fallback: Callable[[], np.ndarray]) -> torch.Tensor:
        shape = plain_jpeg_shape(data)
        array = None
        if shape is None:
            array = fallback()
            shape = array.shape[:2]
        box = sample_crop(*shape, scale=self.scale, ratio=self.ratio, generator=generator)
        flip = sample_flip(generator)
        if array is None:
            try:
                array = simplejpeg.decode_jpeg(data, colorspace="RGB")  # strict: libjpeg warnings raise too
            except ValueError:  # a decode error or libjpeg warning (strict): PIL decides, as on the PIL path
                array = fallback()
        return resized_crop(array, box, self.size, flip)
