"""One small JPEG decoder interface: a list of encoded files -> a list of uint8 (3, H, W) RGB tensors on `device`.

Backends (names are the keys of BACKENDS; `auto` takes the first one that imports, in this order):
  * torchvision: torchvision.io.decode_jpeg on the device list (nvJPEG on CUDA, libjpeg-turbo on the CPU).
    torchvision 0.29 deprecates its decoders (superseded by TorchCodec) and warns on every call; the warning is
    shown once, then silenced for these calls only (by its message, nothing else).
  * torchcodec: torchcodec.decoders.decode_jpeg (the successor; optional extra `torchcodec`). Its CPU path gives
    the same pixels as torchvision's on this project's test JPEGs (tests/test_decoders.py).
  * pil: PIL on the CPU, then one copy to `device`: the fallback that keeps the package working if torchvision
    drops its decoders and TorchCodec is not installed.
Every backend raises RuntimeError when a file of the list cannot be decoded (callers retry files one by one).
nvImageCodec (ROI decode) is not a backend: it needs a GPU, and the issue keeps it only if it measures faster,
which no session has measured yet (docs/data-loaders.md).
"""
from __future__ import annotations

import contextlib
import io
import warnings
from typing import Callable

import numpy as np
import torch
from PIL import Image

DEPRECATION = r"The image decoding and encoding capabilities of TorchVision are deprecated"
_deprecation_shown = False


@contextlib.contextmanager
def _quiet_deprecation():
    """Lets torchvision's decoder deprecation through the first time only; later calls ignore that one warning."""
    global _deprecation_shown
    with warnings.catch_warnings():
        if _deprecation_shown:
            warnings.filterwarnings("ignore", message=DEPRECATION, category=DeprecationWarning)
        _deprecation_shown = True
        yield


def _load_torchvision() -> Callable:
    from torchvision.io import ImageReadMode, decode_jpeg  # ImportError once torchvision removes them

    def decode(files: list[torch.Tensor], device: torch.device) -> list[torch.Tensor]:
        with _quiet_deprecation():
            return decode_jpeg(files, mode=ImageReadMode.RGB, device=device)
    return decode


def _load_torchcodec() -> Callable:
    from torchcodec.decoders import decode_jpeg  # ImportError without the optional extra

    def decode(files: list[torch.Tensor], device: torch.device) -> list[torch.Tensor]:
        try:
            return decode_jpeg(list(files), mode="RGB", device=device)
        except (RuntimeError, ValueError) as e:
            raise RuntimeError(str(e)) from e
    return decode


def _pil_decode_one(data: torch.Tensor) -> torch.Tensor:
    """uint8 (3, H, W) from a JPEG's bytes; RuntimeError if PIL cannot decode them."""
    try:
        with Image.open(io.BytesIO(data.numpy().tobytes())) as image:
            array = np.asarray(image.convert("RGB"))  # (H, W, 3)
    except Exception as e:  # noqa: BLE001 - PIL raises OSError, SyntaxError, ValueError... for bad bytes
        raise RuntimeError(f"PIL: {e}") from e
    return torch.from_numpy(array.copy()).permute(2, 0, 1)


def _load_pil() -> Callable:
    def decode(files: list[torch.Tensor], device: torch.device) -> list[torch.Tensor]:
        return [_pil_decode_one(data).to(device, non_blocking=True) for data in files]
    return decode


BACKENDS: dict[str, Callable[[], Callable]] = {
    "torchvision": _load_torchvision, "torchcodec": _load_torchcodec, "pil": _load_pil}


def available_backends() -> list[str]:
    """The backends that import here, in `auto`'s order of preference."""
    found = []
    for name, load in BACKENDS.items():
        try:
            load()
        except ImportError:
            continue
        found.append(name)
    return found


def get_decoder(name: str = "auto") -> Callable[[list[torch.Tensor], torch.device], list[torch.Tensor]]:
    """decode(files, device) for backend `name`; `auto`: the first available. ValueError for an unknown name,
    ImportError (with what to install) for a known one that does not import."""
    if name == "auto":
        return get_decoder(available_backends()[0])  # pil always imports
    if name not in BACKENDS:
        raise ValueError(f"unknown JPEG decoder {name!r}; choose auto or one of {sorted(BACKENDS)}")
    try:
        return BACKENDS[name]()
    except ImportError as e:
        raise ImportError(f"JPEG decoder {name!r} does not import here ({e}); install it "
                          f"(torchcodec: pip install 'pgt-train[torchcodec]') or use decoder auto") from e
