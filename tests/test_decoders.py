"""pgt_train.data.decoders: every backend that imports here decodes real JPEGs to the same pixels; torchvision's
deprecation warning shows at most once; the package keeps decoding when torchvision's decoders are gone.

TorchCodec is an optional extra: its test runs where `torchcodec` imports (0.17.0 was checked on this project's
CPU machine with torch 2.14.1 by PYTHONPATH=<pip install --target dir> pytest tests/test_decoders.py)."""
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


def pil_reference(data):
    return torch.from_numpy(np.array(Image.open(io.BytesIO(data.numpy().tobytes())).convert("RGB"))).permute(2, 0, 1)


@pytest.mark.parametrize("name", ["torchvision", "torchcodec", "pil"])
def test_backend_gives_pils_pixels(tmp_path, name):
    if name not in decoders.available_backends():
        pytest.skip(f"{name} does not import here")
    files = jpeg_files(tmp_path)
    images = decoders.get_decoder(name)(files, torch.device("cpu"))
    assert len(images) == len(files)
    for data, image in zip(files, images):
        reference = pil_reference(data)
        assert image.dtype == torch.uint8 and image.shape == reference.shape
        assert (image.int() - reference.int()).abs().max().item() <= 1  # measured 0 (libjpeg-turbo in each)


@pytest.mark.parametrize("name", ["torchvision", "torchcodec", "pil"])
def test_bad_bytes_raise_runtime_error(tmp_path, name):
    if name not in decoders.available_backends():
        pytest.skip(f"{name} does not import here")
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
    with pytest.raises(ValueError, match="unknown JPEG decoder 'nvimgcodec'"):
        decoders.get_decoder("nvimgcodec")
