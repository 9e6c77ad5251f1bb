"""pgt_train.data.decoders: every backend that imports here decodes real JPEGs to the same pixels; torchvision's
deprecation warning shows at most once; the package keeps decoding when torchvision's decoders are gone.

TorchCodec is an optional extra: its test runs where `torchcodec` imports (0.17.0 was checked on this project's
CPU machine with torch 2.14.1 by PYTHONPATH=<pip install --target dir> pytest tests/test_decoders.py).
nvImageCodec (extra `nvimgcodec`, also brought by DALI) is tested on the CPU (its CPU_ONLY backend, libjpeg-turbo)
wherever the package is installed; its tests skip, saying so, only where it is not (a broken install fails)."""
import importlib.util
import io
import re
import warnings

import numpy as np
import pytest
import torch
import torchvision
import torchvision.io
from PIL import Image

from pgt_train import benchmarking
from pgt_train.data import decoders


def jpeg_files(tmp_path, n=4):
    """Photo-textured JPEGs (gpu_check's generator) at a quarter of ImageNet's size, as byte tensors."""
    shapes = [(w // 4, h // 4) for w, h in benchmarking.PHOTO_SHAPES]
    root = benchmarking.make_jpeg_folder(tmp_path, classes=("a",), train=n, val=0, texture="photo", sides=shapes)
    return [torch.frombuffer(bytearray(p.read_bytes()), dtype=torch.uint8) for p in sorted(root.rglob("*.jpg"))]


def nvimgcodec_installed() -> bool:
    """Whether the package is there at all (not whether it imports: an install that does not import must fail)."""
    try:
        return importlib.util.find_spec("nvidia.nvimgcodec") is not None
    except ModuleNotFoundError:  # no `nvidia` namespace package at all
        return False


def skip_unless_importable(name):
    if name == "nvimgcodec":
        if not nvimgcodec_installed():
            pytest.skip("nvimgcodec: nvidia-nvimgcodec-cu12 is not installed (pip install -e '.[nvimgcodec]')")
    elif name not in decoders.available_backends():
        pytest.skip(f"{name} does not import here")


def pil_reference(data):
    return torch.from_numpy(np.array(Image.open(io.BytesIO(data.numpy().tobytes())).convert("RGB"))).permute(2, 0, 1)


@pytest.mark.parametrize("name", ["torchvision", "torchcodec", "pil", "nvimgcodec"])
def test_backend_gives_pils_pixels(tmp_path, name):
    skip_unless_importable(name)
    files = jpeg_files(tmp_path)
    images = decoders.get_decoder(name)(files, torch.device("cpu"))
    assert len(images) == len(files)
    for data, image in zip(files, images):
        reference = pil_reference(data)
        assert image.dtype == torch.uint8 and image.shape == reference.shape
        assert (image.int() - reference.int()).abs().max().item() <= 1  # measured 0 (libjpeg-turbo in each)


@pytest.mark.parametrize("name", ["torchvision", "torchcodec", "pil", "nvimgcodec"])
def test_bad_bytes_raise_runtime_error(tmp_path, name):
    skip_unless_importable(name)
    good = jpeg_files(tmp_path, n=1)[0]
    with pytest.raises(RuntimeError):
        decoders.get_decoder(name)([good, good[: len(good) // 3]], torch.device("cpu"))


def test_torchvision_deprecation_is_shown_at_most_once(tmp_path, monkeypatch):
    monkeypatch.setattr(decoders, "_deprecation_shown", False)
    files = jpeg_files(tmp_path, n=2)
    decode = decoders.get_decoder("torchvision")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for _ in range(3):
            decode(files, torch.device("cpu"))
        warnings.warn("another DeprecationWarning", DeprecationWarning)  # not silenced: the filter is narrow
    shown = [w for w in caught if re.match(decoders.DEPRECATION, str(w.message))]
    deprecated = tuple(int(v) for v in torchvision.__version__.split(".")[:2]) >= (0, 29)
    assert len(shown) == (1 if deprecated else 0)
    assert any(str(w.message) == "another DeprecationWarning" for w in caught)


def test_without_torchvision_decoders_auto_falls_back(tmp_path, monkeypatch):
    """torchvision.io without decode_jpeg (as after its announced removal): auto takes the next backend."""
    monkeypatch.delattr(torchvision.io, "decode_jpeg")
    assert "torchvision" not in decoders.available_backends() and "pil" in decoders.available_backends()
    with pytest.raises(ImportError, match="does not import here"):
        decoders.get_decoder("torchvision")
    files = jpeg_files(tmp_path, n=2)
    for data, image in zip(files, decoders.get_decoder("auto")(files, torch.device("cpu"))):
        assert torch.equal(image, pil_reference(data))


def test_unknown_backend_is_refused():
    with pytest.raises(ValueError, match="unknown JPEG decoder 'turbojpeg'"):
        decoders.get_decoder("turbojpeg")
    with pytest.raises(ValueError, match="unknown ROI JPEG decoder 'torchvision'"):
        decoders.get_roi_decoder("torchvision")


def test_auto_never_takes_an_opt_in_backend(monkeypatch):
    """Even listed first, nvimgcodec is not auto's choice: it stays opt-in until measured faster on a GPU."""
    assert decoders.OPT_IN == ("nvimgcodec",) and list(decoders.BACKENDS)[-1] == "nvimgcodec"
    monkeypatch.setattr(decoders, "BACKENDS", {"nvimgcodec": decoders._load_nvimgcodec, "pil": decoders._load_pil})
    assert decoders.get_decoder("auto").__qualname__.startswith("_load_pil.")


# nvImageCodec, decoded on the CPU here (the GPU path has not run in this project: docs/data-loaders.md).
# Tolerance: 1 grey level, as for the other backends; measured 0 on this project's CPU machine (2026-12-02):
# its CPU backend is libjpeg-turbo, as torchvision's CPU decode and PIL are. nvJPEG on a GPU may differ more.
NVIMGCODEC_TOLERANCE = 1


def full_size_jpegs(tmp_path, n=6):
    """Photo-textured JPEGs at ImageNet's typical sizes (PHOTO_SHAPES: 500x375, 375x500, 500x333, 500x400)."""
    root = benchmarking.make_jpeg_folder(tmp_path, classes=("a",), train=n, val=0, texture="photo",
                                         sides=list(benchmarking.PHOTO_SHAPES))
    return [torch.frombuffer(bytearray(p.read_bytes()), dtype=torch.uint8) for p in sorted(root.rglob("*.jpg"))]


def max_difference(a, b):
    assert a.dtype == b.dtype == torch.uint8 and a.shape == b.shape, (a.shape, b.shape)
    return (a.int() - b.int()).abs().max().item()


def test_nvimgcodec_gives_torchvisions_cpu_pixels(tmp_path):
    skip_unless_importable("nvimgcodec")
    files = full_size_jpegs(tmp_path)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=decoders.DEPRECATION, category=DeprecationWarning)
        references = torchvision.io.decode_jpeg(files, mode=torchvision.io.ImageReadMode.RGB)
    images = decoders.get_decoder("nvimgcodec")(files, torch.device("cpu"))
    assert [tuple(i.shape) for i in images] == [tuple(r.shape) for r in references]
    assert all(i.is_contiguous() for i in images)  # planar (3, H, W), as torchvision's
    assert max(max_difference(i, r) for i, r in zip(images, references)) <= NVIMGCODEC_TOLERANCE


def test_nvimgcodec_roi_is_the_crop_of_the_full_decode(tmp_path):
    """Boxes (y0, x0, y1, x1): the whole image, odd offsets off the 8/16-pixel MCU grid, a 224x160 crop, the
    bottom-right corner and a single pixel; each decoded alone equals that crop of the whole decode."""
    skip_unless_importable("nvimgcodec")
    files = full_size_jpegs(tmp_path, n=4)
    full = decoders.get_decoder("nvimgcodec")(files, torch.device("cpu"))
    decode_roi = decoders.get_roi_decoder("nvimgcodec")
    for image, data in zip(full, files):
        height, width = image.shape[1:]
        boxes = [(0, 0, height, width), (1, 3, height - 5, width - 7), (height // 3, width // 5, height // 3 + 224,
                 width // 5 + 160), (height - 17, width - 9, height, width), (17, 33, 18, 34)]
        crops = decode_roi([data] * len(boxes), boxes, torch.device("cpu"))
        for (y0, x0, y1, x1), crop in zip(boxes, crops):
            assert max_difference(crop, image[:, y0:y1, x0:x1]) <= NVIMGCODEC_TOLERANCE  # measured 0


def test_nvimgcodec_roi_refuses_bad_boxes_and_bad_files(tmp_path):
    skip_unless_importable("nvimgcodec")
    good = jpeg_files(tmp_path, n=1)[0]
    decode_roi, cpu = decoders.get_roi_decoder("nvimgcodec"), torch.device("cpu")
    height, width = decoders.get_decoder("nvimgcodec")([good], cpu)[0].shape[1:]
    for box in [(0, 0, height + 1, width), (0, 0, height, width + 1), (-1, 0, 8, 8), (5, 5, 5, 9)]:
        with pytest.raises(ValueError, match="is not inside its"):  # a caller's mistake, not a corrupt file
            decode_roi([good], [box], cpu)
    with pytest.raises(ValueError, match="1 files but 2 ROI boxes"):
        decode_roi([good], [(0, 0, 8, 8)] * 2, cpu)
    cut = good[: len(good) // 3]  # truncated: the header parses, rows below about a third are missing
    with pytest.raises(RuntimeError):
        decode_roi([good, cut], [(0, 0, 8, 8), (height - 8, 0, height, 8)], cpu)
    # a box above the damage decodes: the ROI decode stops at the box's last row, so it cannot see a cut below
    # (gpu_decode only sends files that end at their end-of-image marker to the device decoders)
    assert decode_roi([cut], [(0, 0, 8, 8)], cpu)[0].shape == (3, 8, 8)
    with pytest.raises(RuntimeError):  # not a JPEG at all: the header does not parse
        decode_roi([torch.tensor(list(b"not a jpeg" * 8), dtype=torch.uint8)], [(0, 0, 8, 8)], cpu)


def test_nvimgcodec_gpu_roi_is_refused_on_the_reported_versions(tmp_path):
    """NVIDIA/nvImageCodec issue 55 (0.9.0: GPU ROI decode INTERNAL_ERROR or SIGSEGV): refused before any CUDA
    call, so this runs without a GPU; allow_broken_gpu_roi=True lets a GPU check try it."""
    skip_unless_importable("nvimgcodec")
    from nvidia import nvimgcodec
    if ".".join(nvimgcodec.__version__.split(".")[:2]) not in decoders.GPU_ROI_REPORTED_BROKEN:
        pytest.skip(f"nvImageCodec {nvimgcodec.__version__} has no GPU ROI report in decoders.py")
    good = jpeg_files(tmp_path, n=1)[0]
    with pytest.raises(ValueError, match="issue 55"):
        decoders.get_roi_decoder("nvimgcodec")([good], [(0, 0, 8, 8)], torch.device("cuda"))


def test_nvimgcodec_is_the_pinned_version():
    """pyproject.toml's extra pins the version these tests checked; a different one installed is worth knowing."""
    skip_unless_importable("nvimgcodec")
    from importlib.metadata import version
    assert version("nvidia-nvimgcodec-cu12") == decoders.NVIMGCODEC_PIN
