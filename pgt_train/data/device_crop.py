"""Crops, resizes, flips and normalises a whole batch of decoded images in a few batched tensor ops.

The per-image path (gpu_decode.BatchDecoder.transform_each) calls torchvision's resized_crop / Resize +
CenterCrop once per image: 256 Python calls of a few kernels each per batch. Here the batch is one padded
tensor X (E, 3, Hmax, Wmax) and each image's resize is two resampling matrices built for the whole batch at once:
    out = Ry @ (X @ Rx^T),   Ry (E, S, Hmax), Rx (E, S, Wmax)   (batched matmuls; a flip reverses Rx's rows)
Ry and Rx hold exactly the weights of torchvision's antialiased resize (the PIL-style triangle filter for
bilinear, Keys a=-0.5 for bicubic, widened by the downscale factor), restricted to the crop's rows/columns, so
the crop is the torchvision path's crop and downscaling averages as its antialiasing does. Zero padding never
enters a result: its weights are zero. No Python loop over images runs on tensors; the boxes are host metadata.

Why matrices and not torchvision.ops.roi_align (the issue's example): roi_align with an adaptive sampling_ratio
box-averages bilinear samples, which differed from the antialiased resize by up to 12 grey levels (mean 2) on a
noisy 160x120 test image (measured on this project's 2-core CPU machine, 2026-12-02); these weights agree with
the per-image path within 1 grey level on the tests' images (max 2, mean 0.01 at 500x375 on gpu_check's JPEGs).
Cost: 2 * E * 3 * S * Hmax * (Wmax + S) flops, ~125 GFLOP for 256 images of 500x500 at S=224 (under 1 ms of
an H100's fp16 matmul peak, not measured: the GPU path has never run). On the CPU this dense form is slower
than the per-image path (32 crops at 224 from 500x375: 1,146 ms against 71 ms, 1 thread, this project's 2-core
CPU machine, 2026-12-02); on the CPU it runs only in tests.
"""
from __future__ import annotations

import warnings

import torch

FILTERS = ("bilinear", "bicubic")
# Pixels per padded group (E_g * Hmax * Wmax): 3 channels in fp16 make 768 MiB. A batch whose padded tensor would be
# larger (a few very large ImageNet files) is cropped in groups of similar area.
MAX_PADDED_PIXELS = 2 ** 27


def _filter(kind: str, x: torch.Tensor) -> torch.Tensor:
    """torchvision/PIL's antialias filters at offsets x (in units of the output pixel)."""
    x = x.abs()
    if kind == "bilinear":
        return (1 - x).clamp_(min=0)
    if kind == "bicubic":  # Keys, a = -0.5 (PIL's and torchvision's antialiased bicubic)
        a = -0.5
        near = ((a + 2) * x - (a + 3)) * x * x + 1
        far = ((a * x - 5 * a) * x + 8 * a) * x - 4 * a
        return torch.where(x < 1, near, torch.where(x < 2, far, torch.zeros_like(x)))
    raise ValueError(f"unknown resize filter {kind!r} (valid: {', '.join(FILTERS)})")


def resample_weights(start: torch.Tensor, length: torch.Tensor, out_total: torch.Tensor, offset: torch.Tensor, *,
                     out_len: int, size: int, kind: str) -> torch.Tensor:
    """(E, out_len, size) rows of the resize of source span [start, start+length) to out_total pixels, rows
    offset..offset+out_len of it (a center crop after the resize; 0 for a crop then resize). Inputs (E,) float32.

    As aten's _compute_indices_weights_aa: center = scale * (i + 0.5), weights filter((y + 0.5 - center) / s)
    with s = max(scale, 1), over the source pixels inside the span, normalised to sum 1.
    """
    scale = length / out_total  # (E,) source pixels per output pixel
    support = scale.clamp(min=1)[:, None, None]
    i = torch.arange(out_len, dtype=torch.float32, device=start.device)[None] + offset[:, None]  # (E, out_len)
    center = start[:, None] + scale[:, None] * (i + 0.5)
    y = torch.arange(size, dtype=torch.float32, device=start.device)  # (size,) padded source coordinate
    weights = _filter(kind, (y + 0.5 - center[..., None]) / support)  # (E, out_len, size)
    inside = (y >= start[:, None]) & (y < (start + length)[:, None])  # (E, size)
    weights = weights * inside[:, None, :]
    return weights / weights.sum(-1, keepdim=True)


def pad_batch(images: list[torch.Tensor]) -> torch.Tensor:
    """uint8 (3, Hi, Wi) images -> one zero-padded (E, 3, Hmax, Wmax) tensor (one nested-tensor op)."""
    with warnings.catch_warnings():  # "nested tensors are in prototype stage": true, and the op is all we use
        warnings.filterwarnings("ignore", message=".*nested tensors is in prototype stage", category=UserWarning)
        return torch.nested.nested_tensor(list(images)).to_padded_tensor(0)


def train_spans(boxes: torch.Tensor, size: int) -> tuple[tuple, tuple]:
    """RandomResizedCrop boxes (E, 4) as (top, left, height, width) -> the (start, length, out_total, offset)
    spans of rows and of columns: the crop resized to size x size."""
    boxes = boxes.to(torch.float32)
    full, zero = torch.full_like(boxes[:, 0], size), torch.zeros_like(boxes[:, 0])
    return (boxes[:, 0], boxes[:, 2], full, zero), (boxes[:, 1], boxes[:, 3], full, zero)


def val_spans(sizes: torch.Tensor, resize: int, crop: int) -> tuple[tuple, tuple]:
    """Image sizes (E, 2) as (H, W) -> spans of v2.Resize(resize) (short side to `resize`, long side truncated as
    torchvision does) then v2.CenterCrop(crop) (offset int(round((new - crop) / 2)))."""
    sizes = sizes.to(torch.float32)
    h, w = sizes[:, 0], sizes[:, 1]
    short = torch.minimum(h, w)
    new_h = torch.where(h <= w, torch.full_like(h, resize), torch.floor(resize * h / short))
    new_w = torch.where(w <= h, torch.full_like(w, resize), torch.floor(resize * w / short))
    zero = torch.zeros_like(h)
    top, left = torch.round((new_h - crop) / 2), torch.round((new_w - crop) / 2)  # round half to even, as Python
    return (zero, h, new_h, top), (zero, w, new_w, left)


def size_groups(shapes: list[tuple[int, int]], budget: int) -> list[list[int]]:
    """Indices grouped by area (host ints only) so that each group's padded size len * Hmax * Wmax <= budget
    (a single image larger than the budget is a group of its own); one group when the whole batch fits."""
    if len(shapes) * max(h for h, _ in shapes) * max(w for _, w in shapes) <= budget:
        return [list(range(len(shapes)))]
    groups, current, hmax, wmax = [], [], 0, 0
    for k in sorted(range(len(shapes)), key=lambda k: shapes[k][0] * shapes[k][1]):
        h, w = max(hmax, shapes[k][0]), max(wmax, shapes[k][1])
        if current and (len(current) + 1) * h * w > budget:
            groups.append(current)
            current, h, w = [], shapes[k][0], shapes[k][1]
        current.append(k)
        hmax, wmax = h, w
    return groups + [current]


def crop_batch(images: list[torch.Tensor], rows: tuple, cols: tuple, *, flips: torch.Tensor, size: int,
               kind: str, mean: torch.Tensor, std: torch.Tensor, dtype: torch.dtype,
               channels_last: bool, budget: int = MAX_PADDED_PIXELS) -> torch.Tensor:
    """Decoded uint8 images -> normalised (E, 3, size, size) `dtype` batch: crop, resize, flip, normalise.

    rows/cols: spans from train_spans or val_spans; flips (E,) bool; mean/std (1, 3, 1, 1) in grey levels.
    Computes in fp16 on CUDA (pixel sums in fp32 accumulators), fp32 on the CPU.
    """
    groups = size_groups([tuple(image.shape[1:]) for image in images], budget)
    if len(groups) == 1:
        out = _crop_levels(images, rows, cols, flips=flips, size=size, kind=kind)
    else:
        out = torch.empty((len(images), 3, size, size), device=flips.device)
        for group in groups:
            at = torch.tensor(group, device=flips.device)
            out[at] = _crop_levels([images[k] for k in group], tuple(t[at] for t in rows), tuple(t[at] for t in cols),
                                   flips=flips[at], size=size, kind=kind)
    out = out.sub_(mean).div_(std)
    return out.to(dtype).contiguous(memory_format=torch.channels_last if channels_last else torch.contiguous_format)


def _crop_levels(images: list[torch.Tensor], rows: tuple, cols: tuple, *, flips: torch.Tensor, size: int,
                 kind: str) -> torch.Tensor:
    """One padded group -> float32 (E, 3, size, size) in grey levels 0..255."""
    padded = pad_batch(images)  # (E, 3, Hmax, Wmax) uint8
    work = torch.float16 if padded.is_cuda else torch.float32
    ry = resample_weights(*rows, out_len=size, size=padded.shape[2], kind=kind)  # (E, S, Hmax)
    rx = resample_weights(*cols, out_len=size, size=padded.shape[3], kind=kind)  # (E, S, Wmax)
    rx = torch.where(flips.to(rx.device)[:, None, None], rx.flip(1), rx)  # a flip reverses the output columns
    # Columns first, then rows, each pass rounded to uint8 levels: as PIL's and torchvision's two-pass uint8
    # resize (bicubic overshoots are clipped between the passes there too).
    wide = (padded.to(work) @ rx.to(work).transpose(1, 2)[:, None]).round_().clamp_(0, 255)  # (E, 3, Hmax, S)
    return (ry.to(work)[:, None] @ wide).float().round_().clamp_(0, 255)  # (E, 3, S, S)
