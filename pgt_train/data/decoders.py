"""One small JPEG decoder interface: a list of encoded files -> a list of uint8 (3, H, W) RGB tensors on `device`.

Backends (names are the keys of BACKENDS; `auto` takes the first one that imports, in this order, skipping OPT_IN):
  * torchvision: torchvision.io.decode_jpeg on the device list (nvJPEG on CUDA, libjpeg-turbo on the CPU).
    torchvision 0.29 deprecates its decoders (superseded by TorchCodec) and warns on every call; the warning is
    shown once, then silenced for these calls only (by its message, nothing else).
  * torchcodec: torchcodec.decoders.decode_jpeg (the successor; optional extra `torchcodec`). Its CPU path gives
    the same pixels as torchvision's on this project's test JPEGs (tests/test_decoders.py).
  * pil: PIL on the CPU, then one copy to `device`: the fallback that keeps the package working if torchvision
    drops its decoders and TorchCodec is not installed.
  * nvimgcodec: NVIDIA nvImageCodec (optional extra `nvimgcodec`, pinned 0.9.0.20; DALI 2.4 brings the same
    version). Opt-in only (OPT_IN; last in the order, after pil, which always imports): `auto` takes it only once
    it measures faster on a GPU than the others (docs/data-loaders.md). On the CPU it decodes with
    libjpeg-turbo: the same pixels as PIL's on the tests' JPEGs. It alone also decodes just a region of interest
    of each file: get_roi_decoder("nvimgcodec").
Every backend raises RuntimeError when a file of the list cannot be decoded (callers retry files one by one).
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


NVIMGCODEC_PIN = "0.9.0.20"  # pyproject.toml's extra `nvimgcodec`; the version DALI 2.4 requires (>=0.9.0,<0.10)
# NVIDIA/nvImageCodec issue 55 (open, 2026-08): in 0.9.0 GPU JPEG ROI decode fails on ordinary in-bounds boxes
# (INTERNAL_ERROR on A100, SIGSEGV on H100/B200; 0.8.0 worked). 0.8.0.22 cannot be the pin: it cannot create a
# CPU-only decoder without a GPU (so no test here) and DALI 2.4 requires >=0.9.0,<0.10. ROI on CUDA is refused for these
# major.minor versions unless asked for (allow_broken_gpu_roi), so a run cannot crash on it by default.
GPU_ROI_REPORTED_BROKEN = ("0.9",)


def _nvimgcodec_decoders(nvimgcodec) -> Callable[[torch.device], object]:
    """device -> its nvimgcodec.Decoder, made once per device. CPU: the CPU_ONLY backend (libjpeg-turbo) with no
    CUDA device, so it runs where there is no GPU; CUDA: nvImageCodec's default backends for that GPU."""
    made = {}

    def decoder_for(device: torch.device):
        if device.type not in ("cpu", "cuda"):
            raise ValueError(f"nvimgcodec decodes on cpu or cuda, not {device}")
        if str(device) not in made:
            if device.type == "cpu":
                made[str(device)] = nvimgcodec.Decoder(device_id=nvimgcodec.NVIMGCODEC_DEVICE_CPU_ONLY,
                                                       backends=[nvimgcodec.Backend(nvimgcodec.CPU_ONLY)])
            else:
                index = device.index if device.index is not None else torch.cuda.current_device()
                made[str(device)] = nvimgcodec.Decoder(device_id=index)
        return made[str(device)]
    return decoder_for


def _nvimgcodec_streams(nvimgcodec, files: list[torch.Tensor]) -> list:
    """One CodeStream per file (uint8 (length,) CPU tensor); RuntimeError for a header nvImageCodec cannot parse
    here (some bad headers only show at decode: None there)."""
    streams = []
    for k, data in enumerate(files):
        try:
            streams.append(nvimgcodec.CodeStream(data.numpy()))
        except RuntimeError as e:
            raise RuntimeError(f"nvImageCodec: file {k} of {len(files)}: {e}") from e
    return streams


def _nvimgcodec_run(nvimgcodec, decoder, streams: list, device: torch.device) -> list[torch.Tensor]:
    """Decodes the code streams (whole files or ROI views) to uint8 (3, H, W) on `device`.

    Planar RGB (P_RGB) gives torchvision's layout without a permute; EXIF orientation is not applied, as in the
    other backends (and the ROI boxes are in the stored image's pixels). nvImageCodec returns None for a file it
    cannot decode: one such file fails the list, as with the other backends."""
    params = nvimgcodec.DecodeParams(apply_exif_orientation=False, color_spec=nvimgcodec.SRGB,
                                     sample_format=nvimgcodec.P_RGB)
    stream = torch.cuda.current_stream(device).cuda_stream if device.type == "cuda" else 0  # torch's order
    images = decoder.decode(streams, params=params, cuda_stream=stream)
    failed = [k for k, image in enumerate(images) if image is None]
    if failed:
        raise RuntimeError(f"nvImageCodec could not decode file(s) {failed} of {len(images)}")
    host = nvimgcodec.ImageBufferKind.STRIDED_HOST
    # host images: numpy's array interface (nvImageCodec's DLPack export makes a CUDA call, which fails without a
    # GPU); device images: DLPack, which makes torch's current stream wait for the decode
    return [torch.from_numpy(np.asarray(image)).to(device, non_blocking=True) if image.buffer_kind == host
            else torch.from_dlpack(image) for image in images]


def _load_nvimgcodec() -> Callable:
    from nvidia import nvimgcodec  # ImportError without the optional extra (or DALI, which brings it)
    decoder_for = _nvimgcodec_decoders(nvimgcodec)

    def decode(files: list[torch.Tensor], device: torch.device) -> list[torch.Tensor]:
        if not files:
            return []
        return _nvimgcodec_run(nvimgcodec, decoder_for(device), _nvimgcodec_streams(nvimgcodec, files), device)
    return decode


def _check_box(box, *, height: int, width: int, k: int) -> tuple[int, int, int, int]:
    """(y0, x0, y1, x1) as ints; ValueError unless 0 <= y0 < y1 <= height and 0 <= x0 < x1 <= width."""
    y0, x0, y1, x1 = (int(v) for v in box)
    if not (0 <= y0 < y1 <= height and 0 <= x0 < x1 <= width):
        raise ValueError(f"ROI box {k} (y0, x0, y1, x1) = {(y0, x0, y1, x1)} is not inside its {height}x{width} image")
    return y0, x0, y1, x1


def _load_nvimgcodec_roi(*, allow_broken_gpu_roi: bool) -> Callable:
    from nvidia import nvimgcodec
    decoder_for = _nvimgcodec_decoders(nvimgcodec)
    broken_on_gpu = ".".join(nvimgcodec.__version__.split(".")[:2]) in GPU_ROI_REPORTED_BROKEN

    def decode_roi(files: list[torch.Tensor], boxes, device: torch.device) -> list[torch.Tensor]:
        """uint8 (3, y1 - y0, x1 - x0) per file: only its box (y0, x0, y1, x1), in pixels of the stored image."""
        if device.type == "cuda" and broken_on_gpu and not allow_broken_gpu_roi:
            raise ValueError(f"nvImageCodec {nvimgcodec.__version__} GPU ROI decode is reported broken (NVIDIA/"
                             f"nvImageCodec issue 55: INTERNAL_ERROR or SIGSEGV); decode whole images on the GPU, "
                             f"ROIs on the CPU, or pass allow_broken_gpu_roi=True to test it")
        if len(boxes) != len(files):
            raise ValueError(f"{len(files)} files but {len(boxes)} ROI boxes")
        if not files:
            return []
        streams = _nvimgcodec_streams(nvimgcodec, files)
        views = [stream.get_sub_code_stream(region=nvimgcodec.Region(
                 *_check_box(box, height=stream.height, width=stream.width, k=k)))
                 for k, (stream, box) in enumerate(zip(streams, boxes))]
        return _nvimgcodec_run(nvimgcodec, decoder_for(device), views, device)
    return decode_roi


BACKENDS: dict[str, Callable[[], Callable]] = {
    "torchvision": _load_torchvision, "torchcodec": _load_torchcodec, "pil": _load_pil,
    "nvimgcodec": _load_nvimgcodec}  # last: opt-in (OPT_IN), see the module docstring
OPT_IN = ("nvimgcodec",)  # never chosen by `auto`: not shown faster than the others on a GPU (docs/data-loaders.md)
ROI_BACKENDS: dict[str, Callable[..., Callable]] = {"nvimgcodec": _load_nvimgcodec_roi}


def available_backends() -> list[str]:
    """The backends that import here, in `auto`'s order of preference (OPT_IN ones last; auto skips them)."""
    found = []
    for name, load in BACKENDS.items():
        try:
            load()
        except ImportError:
            continue
        found.append(name)
    return found


def _install_hint(name: str) -> str:
    """What to install for an optional backend that does not import, as the start of an error's advice."""
    return f"pip install 'pgt-train[{name}]' or " if name in ("torchcodec", "nvimgcodec") else ""


def resolve_backend(name: str) -> str:
    """The backend `name` stands for: itself, or for `auto` the first available that is not OPT_IN."""
    if name != "auto":
        return name
    return [b for b in available_backends() if b not in OPT_IN][0]  # pil always imports


def get_decoder(name: str = "auto") -> Callable[[list[torch.Tensor], torch.device], list[torch.Tensor]]:
    """decode(files, device) for backend `name`; `auto`: the first available that is not OPT_IN. ValueError for an
    unknown name, ImportError (with what to install) for a known one that does not import."""
    if name == "auto":
        return get_decoder(resolve_backend(name))
    if name not in BACKENDS:
        raise ValueError(f"unknown JPEG decoder {name!r}; choose auto or one of {sorted(BACKENDS)}")
    try:
        return BACKENDS[name]()
    except ImportError as e:
        raise ImportError(f"JPEG decoder {name!r} does not import here ({e}); {_install_hint(name)}use decoder auto"
                          ) from e


def get_roi_decoder(name: str = "nvimgcodec", *, allow_broken_gpu_roi: bool = False) -> Callable:
    """decode_roi(files, boxes, device) -> uint8 (3, y1 - y0, x1 - x0) per file, boxes (y0, x0, y1, x1); the decode
    stops after the box's last row (on the CPU). Only nvimgcodec has one. allow_broken_gpu_roi: run GPU ROI decode
    even on a version with the open GPU ROI report (GPU_ROI_REPORTED_BROKEN), to test it; a crash there is a
    SIGSEGV, not an error."""
    if name not in ROI_BACKENDS:
        raise ValueError(f"unknown ROI JPEG decoder {name!r}; choose one of {sorted(ROI_BACKENDS)}")
    try:
        return ROI_BACKENDS[name](allow_broken_gpu_roi=allow_broken_gpu_roi)
    except ImportError as e:
        raise ImportError(f"ROI JPEG decoder {name!r} does not import here ({e}); {_install_hint(name)}decode whole "
                          f"images and crop") from e
