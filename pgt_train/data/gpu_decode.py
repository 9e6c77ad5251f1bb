"""data.loader: nvjpeg — loader workers only read file bytes; the main process decodes whole batches on the device.

Why: on real JPEGs the torchvision loader (PIL decode + crop in workers) fed an H100 at ~1,450 img/s
with 14 workers, while ResNet-50 trains at ~4,900; torchvision's batched nvJPEG decode ran at ~12,000
img/s with the crops (docs/data-loaders.md).

Per sample, the worker opens the file's header with PIL (no decode) and reads its bytes:
  * a plain RGB (YCbCr) baseline JPEG that ends at its end-of-image marker travels as bytes, with its
    crop box and flip already drawn (training), exactly as the torchvision path draws them: the same
    v2.RandomResizedCrop / RandomHorizontalFlip objects, under sample_rng(sample_seed(seed, epoch,
    index)), in the same order, on an image of the same size. So crop boxes and flips are equal to the
    torchvision loader's, sample by sample.
  * anything else (PNG, CMYK or grayscale JPEG, progressive, trailing bytes after the end marker, a
    header PIL cannot read) goes through the torchvision path itself (SeededImageFolder.__getitem__):
    PIL decode and transform in the worker, or a CorruptSample.
The batch's bytes travel as one concatenated tensor (one shared-memory block per batch, not one per file).
In the main process, torchvision.io.decode_jpeg decodes the list on `device` (nvJPEG on CUDA; libjpeg-turbo
on the CPU, which is how the tests run this code), then the same transform objects crop, resize
(antialiased) and flip each image on the device (val: Resize + CenterCrop). A file the batched decode
rejects is retried alone on the CPU; one that fails there too is counted as corrupt and, in training,
replaced by another image of the batch (as the torchvision path keeps training batches whole).
Sharding, exactly-once validation, mid-epoch resume and normalisation are TorchLoader's: this loader is a
TorchLoader whose DataLoader yields encoded batches, decoded before TorchLoader normalises them.
"""
from __future__ import annotations

import contextlib
import os
import stat
import warnings
from typing import NamedTuple

import torch
from PIL import Image
from torch.utils.data import Dataset
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as TF

import pgt_train.data.device_crop as device_crop
from pgt_train.data.decoders import get_decoder, resolve_backend
from pgt_train.data.folder import SeededImageFolder, build_datasets
from pgt_train.data.torch_loader import IMAGENET_MEAN, IMAGENET_STD, CorruptSample, TorchLoader, sample_rng, sample_seed
from pgt_train.preempt import children_ignore_sigint
from pgt_train.errors import UserError

NORM_MEAN = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1) * 255  # grey levels
NORM_STD = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1) * 255
JPEG_END = b"\xff\xd9"  # EOI marker: a file cut short lacks it, and PIL (not nvJPEG) rejects truncated files


class EncodedSample(NamedTuple):
    """One JPEG as its file bytes, with the geometry the main process applies after decoding it."""
    data: torch.Tensor  # uint8 (file length,)
    target: int
    index: int  # dataset index: names the file if decoding fails
    box: tuple[int, int, int, int]  # (top, left, height, width) of the train crop; val: unused zeros
    flip: bool


class EncodedBatch(NamedTuple):
    """A collated batch (a NamedTuple of tensors, so DataLoader's pin_memory pins each field)."""
    data: torch.Tensor  # uint8 (sum of file lengths,): the encoded files, concatenated
    lengths: torch.Tensor  # int64 (E,)
    boxes: torch.Tensor  # int64 (E, 4)
    flips: torch.Tensor  # bool (E,)
    indices: torch.Tensor  # int64 (E,)
    worker_images: torch.Tensor  # uint8 (R, 3, S, S): decoded and transformed in the worker (the torchvision path)
    encoded_at: torch.Tensor  # int64 (E,): each encoded sample's position in the batch (sampler order)
    worker_images_at: torch.Tensor  # int64 (R,): their positions in the batch
    targets: torch.Tensor  # int64 (E + R,) in sampler order
    corrupt: list  # CorruptSample, dropped from the batch


def _train_params(transform: v2.Compose, image: Image.Image) -> tuple[tuple[int, int, int, int], bool]:
    """The crop box and flip that transform(image) would draw, consuming the global RNG the same way.

    folder.train_transform is Compose([RandomResizedCrop, RandomHorizontalFlip, PILToTensor]): the crop
    draws its parameters from the image size, then the flip transform draws torch.rand(1) and flips when
    it is below p. `image` is only opened (header read), so query_size costs no decode.
    """
    crop, flip = transform.transforms[:2]
    make_params = getattr(crop, "make_params", None) or crop._get_params  # torchvision < 0.21: _get_params
    params = make_params([image])
    flipped = bool(torch.rand(1) < flip.p)
    return (params["top"], params["left"], params["height"], params["width"]), flipped


def device_decodable(image: Image.Image, data: bytes) -> bool:
    """A baseline 3-channel JPEG, complete: what nvJPEG decodes the way PIL does."""
    return (image.format == "JPEG" and image.mode == "RGB" and not image.info.get("progressive")
            and data.endswith(JPEG_END))


def read_plain_jpeg(path: str) -> tuple[bytes, Image.Image] | None:
    """(file bytes, header-only PIL image) of a device-decodable JPEG; None for anything else.

    Only regular files are opened (a FIFO would block), and PIL's decompression-bomb warning counts as a
    refusal, as in folder.read_rgb: such files take the torchvision path, which reports them.
    """
    try:
        if not stat.S_ISREG(os.stat(path).st_mode):
            return None
        with warnings.catch_warnings(), open(path, "rb") as f:
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(f)  # parses the header only
            if image.format != "JPEG" or image.mode != "RGB":  # decide before reading a large odd file
                return None
            f.seek(0)
            data = f.read()
    except Exception:  # noqa: BLE001 — whatever PIL refuses, the torchvision path reports (or skips) as today
        return None
    return (data, image) if device_decodable(image, data) else None


class EncodedImageFolder(Dataset):
    """Wraps a SeededImageFolder (its file list, class indices, transform and seed): same keys, same samples,
    but plain JPEGs come back as EncodedSample (bytes + drawn geometry) instead of decoded tensors."""

    def __init__(self, folder: SeededImageFolder, *, train: bool):
        expected = ((v2.RandomResizedCrop, v2.RandomHorizontalFlip, v2.PILToTensor) if train
                    else (v2.Resize, v2.CenterCrop, v2.PILToTensor))
        steps = tuple(type(t) for t in folder.transform.transforms)
        if steps != expected:  # the geometry below replays these steps; a changed transform must change it too
            raise TypeError(f"EncodedImageFolder replays {expected} but folder.py's transform is {steps}")
        self.folder, self.train = folder, train
        self.samples, self.classes, self.class_to_idx = folder.samples, folder.classes, folder.class_to_idx

    @property
    def replace_unreadable(self) -> bool:
        """TorchLoader sets it on the dataset it gets: the files that take the torchvision path follow it."""
        return getattr(self.folder, "replace_unreadable", False)

    @replace_unreadable.setter
    def replace_unreadable(self, value: bool) -> None:
        self.folder.replace_unreadable = value

    def __len__(self) -> int:
        return len(self.folder)

    def __getitem__(self, key):
        index, epoch = key
        path, target = self.samples[index]
        plain_jpeg = read_plain_jpeg(path)
        if plain_jpeg is None:
            return self.folder[key]
        data, image = plain_jpeg
        if not self.train:
            return EncodedSample(torch.frombuffer(bytearray(data), dtype=torch.uint8), target, index, (0, 0, 0, 0),
                                 False)
        with sample_rng(sample_seed(self.folder.seed, epoch, index)):  # as SeededImageFolder
            box, flip = _train_params(self.folder.transform, image)
        return EncodedSample(torch.frombuffer(bytearray(data), dtype=torch.uint8), target, index, box, flip)


def collate_encoded(samples: list) -> EncodedBatch:
    """Splits a batch into encoded files (concatenated), images the worker decoded (stacked) and corrupt files.

    A CorruptSample's `replacement` (a readable image the torchvision path drew in its place, training
    only; torch_loader.CorruptSample) takes its place in the batch.
    """
    corrupt = [s for s in samples if isinstance(s, CorruptSample)]
    kept = [getattr(s, "replacement", None) if isinstance(s, CorruptSample) else s for s in samples]
    kept = [s for s in kept if s is not None]
    encoded = [(i, s) for i, s in enumerate(kept) if isinstance(s, EncodedSample)]
    decoded = [(i, s) for i, s in enumerate(kept) if not isinstance(s, EncodedSample)]
    files = [s for _, s in encoded]
    return EncodedBatch(
        data=torch.cat([s.data for s in files]) if files else torch.empty(0, dtype=torch.uint8),
        lengths=torch.tensor([len(s.data) for s in files], dtype=torch.int64),
        boxes=torch.tensor([s.box for s in files], dtype=torch.int64).view(-1, 4),
        flips=torch.tensor([s.flip for s in files], dtype=torch.bool),
        indices=torch.tensor([s.index for s in files], dtype=torch.int64),
        worker_images=(torch.stack([image for _, (image, _) in decoded]) if decoded
                       else torch.empty(0, dtype=torch.uint8)),
        encoded_at=torch.tensor([i for i, _ in encoded], dtype=torch.int64),
        worker_images_at=torch.tensor([i for i, _ in decoded], dtype=torch.int64),
        targets=torch.tensor([s[1] for s in kept], dtype=torch.int64),  # (image, target) or EncodedSample
        corrupt=corrupt)


class BatchDecoder:
    """EncodedBatch -> (normalised `dtype` images (N, 3, S, S) on `device`, targets, corrupt), in sampler order.

    mean/std (1, 3, 1, 1) in grey levels. transform() is the per-image path (the reference the tests compare with).
    """

    def __init__(self, dataset: EncodedImageFolder, *, device: torch.device, decoder: str = "auto",
                 mean: torch.Tensor = NORM_MEAN, std: torch.Tensor = NORM_STD, dtype: torch.dtype = torch.float32,
                 channels_last: bool = False):
        self.dataset, self.device = dataset, device
        self.backend = resolve_backend(decoder)  # the one decoding, by name (decoders.py)
        self.decode_files = get_decoder(self.backend)
        transforms = dataset.folder.transform.transforms
        self.train = dataset.train
        crop = transforms[0]  # the torchvision path's RandomResizedCrop object (train)
        self.resized_crop = getattr(crop, "transform", None) or crop._transform  # torchvision < 0.21: _transform
        self.val_geometry = None if self.train else v2.Compose(transforms[:-1])  # Resize, CenterCrop (no PILToTensor)
        self.size = crop.size[0] if self.train else transforms[1].size[0]  # S: the square output side
        self.resize = None if self.train else transforms[0].size[0]  # val: short side before the center crop
        interpolation = crop.interpolation if self.train else transforms[0].interpolation
        self.kind = getattr(interpolation, "value", interpolation)  # "bilinear" | "bicubic": device_crop.FILTERS
        self.mean, self.std, self.dtype, self.channels_last = mean.to(device), std.to(device), dtype, channels_last

    def decode(self, batch: EncodedBatch) -> tuple[list, list]:
        """Decoded images (None where a file failed) and the CorruptSamples of the failures."""
        files = list(torch.split(batch.data, batch.lengths.tolist()))
        if not files:
            return [], []
        try:
            return self.decode_files(files, self.device), []
        except RuntimeError:  # one bad file fails the whole batched call: retry each alone on the CPU
            images, corrupt = [], []
            for data, index in zip(files, batch.indices.tolist()):
                try:
                    images.append(self.decode_files([data], torch.device("cpu"))[0].to(self.device, non_blocking=True))
                except RuntimeError as e:
                    images.append(None)
                    corrupt.append(CorruptSample(self.dataset.samples[index][0], f"decode_jpeg: {e}"))
            return images, corrupt

    def transform(self, image: torch.Tensor, box: list[int], flip: bool) -> torch.Tensor:
        """The per-image path: uint8 (3, S, S) by torchvision's own transforms."""
        if not self.train:
            return self.val_geometry(image)
        top, left, height, width = box
        image = self.resized_crop(image, dict(top=top, left=left, height=height, width=width))
        return TF.horizontal_flip(image) if flip else image

    def crop(self, images: list[torch.Tensor], boxes: torch.Tensor, flips: torch.Tensor) -> torch.Tensor:
        """The batched path (device_crop.py): decoded images -> normalised (E, 3, S, S) in one pass."""
        if self.train:
            rows, cols = device_crop.train_spans(boxes.to(self.device, non_blocking=True), self.size)
        else:
            sizes = torch.tensor([image.shape[1:] for image in images])  # host metadata: no device sync
            rows, cols = device_crop.val_spans(sizes.to(self.device, non_blocking=True), self.resize, self.size)
        flips = flips.to(self.device, non_blocking=True)
        return device_crop.crop_batch(images, rows, cols, flips=flips, size=self.size, kind=self.kind,
                                      mean=self.mean, std=self.std, dtype=self.dtype, channels_last=self.channels_last)

    def __call__(self, batch: EncodedBatch):
        """(normalised images (N, 3, S, S) on device or None, targets, corrupt), in sampler order."""
        decoded, corrupt = self.decode(batch)
        ok = [k for k, image in enumerate(decoded) if image is not None]  # all of them unless a file failed
        n = len(batch.targets)
        layout = torch.channels_last if self.channels_last else torch.contiguous_format
        out = torch.empty((n, 3, self.size, self.size), dtype=self.dtype, device=self.device, memory_format=layout)
        filled = torch.zeros(n, dtype=torch.bool)
        if ok:
            keep = torch.tensor(ok, dtype=torch.int64)
            at = batch.encoded_at[keep]
            crops = self.crop([decoded[k] for k in ok], batch.boxes[keep], batch.flips[keep])
            out[at.to(self.device, non_blocking=True)] = crops
            filled[at] = True
        if len(batch.worker_images_at):  # decoded and cropped in a worker (the torchvision path): uint8
            images = batch.worker_images.to(self.device, non_blocking=True).float().sub_(self.mean).div_(self.std)
            out[batch.worker_images_at.to(self.device, non_blocking=True)] = images.to(self.dtype)
            filled[batch.worker_images_at] = True
        return self._fill_failed(out, batch.targets, filled, batch.corrupt + corrupt, corrupt)

    def _fill_failed(self, out, targets, filled, all_corrupt, failed_here):
        """Training keeps the batch whole (as the torchvision path): another image of the batch stands in for
        each file that failed to decode here; validation drops them."""
        if len(filled) and bool(filled.all()):
            return out, targets, all_corrupt
        keep = filled.nonzero().view(-1)
        if not len(keep):
            return None, targets[:0], all_corrupt
        if not self.train:
            return out[keep.to(self.device)], targets[keep], all_corrupt
        failed = (~filled).nonzero().view(-1)
        stand_in = keep[torch.arange(len(failed)) % len(keep)]
        out[failed.to(self.device)] = out[stand_in.to(self.device)]
        targets = targets.clone()
        targets[failed] = targets[stand_in]
        if "replacement" in CorruptSample._fields:  # tells TorchLoader a stand-in took the file's place
            replaced = [c._replace(replacement=(None, int(targets[j]))) for c, j in zip(failed_here, stand_in.tolist())]
            all_corrupt = all_corrupt[:len(all_corrupt) - len(failed_here)] + replaced
        return out, targets, all_corrupt


class SideStream:
    """Where batches are decoded and cropped: a side CUDA stream, so batch k+1's decode overlaps step k.

    hand_over(tensor) makes the current (training) stream wait for the side stream's work queued so far and
    marks the tensor as used by it (record_stream), so the caching allocator does not reuse its memory while
    the training stream may still read it. No host sync. On the CPU both are no-ops and the context is empty.
    """

    def __init__(self, device: torch.device):
        self.stream = torch.cuda.Stream(device) if device.type == "cuda" else None

    def context(self):
        return torch.cuda.stream(self.stream) if self.stream is not None else contextlib.nullcontext()

    def hand_over(self, tensor: torch.Tensor) -> None:
        if self.stream is None:
            return
        current = torch.cuda.current_stream(self.stream.device)
        current.wait_stream(self.stream)  # records the side stream's position now: only batches queued so far
        tensor.record_stream(current)


class DecodedBatches:
    """Stands in for TorchLoader.loader: iterates the DataLoader of EncodedBatches and decodes each one.

    One batch ahead: batch k+1 is queued for decode and crop on a SideStream before batch k is yielded, and
    handed over to the training stream after the trainer has queued step k. Same batches, same order (resume
    and exactly-once validation are the DataLoader's and sampler's, unchanged). Other attributes: DataLoader's.
    """

    def __init__(self, loader, decoder: BatchDecoder, *, train: bool):
        self.loader, self.decoder, self.train = loader, decoder, train
        self.pending_corrupt: list = []  # from a batch whose files were all corrupt: reported with the next one
        self.side = SideStream(decoder.device)

    def __iter__(self):
        # The DataLoader's iterator (which forks the workers) starts now, inside TorchLoader's SIGINT guard,
        # not lazily at the first next() of a generator.
        return self._decoded(iter(self.loader))

    def _decoded(self, batches):
        decoded_batch = None  # decoded and handed over, yielded once the next one is queued
        for batch in batches:
            with self.side.context():
                images, targets, corrupt = self.decoder(batch)
            corrupt, self.pending_corrupt = self.pending_corrupt + corrupt, []
            if images is None:
                if self.train:  # skipping would leave this rank one step behind the others under DDP
                    raise UserError(f"no image of a training batch could be decoded ({len(corrupt)} files, e.g. "
                                    f"{corrupt[0].path}); remove the unreadable files")
                self.pending_corrupt = corrupt  # validation: nothing to score here
                continue
            if decoded_batch is not None:
                yield decoded_batch  # step k is queued while batch k+1 decodes on the side stream
            self.side.hand_over(images)
            decoded_batch = images, targets, corrupt
        if decoded_batch is not None:
            yield decoded_batch

    def __len__(self) -> int:
        return len(self.loader)

    def __getattr__(self, name):
        if name in ("loader", "decoder", "train", "pending_corrupt"):  # not set yet (unpickling): no recursion
            raise AttributeError(name)
        return getattr(self.loader, name)


class NvjpegLoader(TorchLoader):
    """TorchLoader over an EncodedImageFolder; decoding and crops happen on `device` in the main process.
    Its batches come normalised (and in the model's memory format) from BatchDecoder, so __iter__ only reports."""

    def __init__(self, dataset: EncodedImageFolder, *, device: torch.device, decoder: str = "auto",
                 dtype: torch.dtype = torch.float32, **kwargs):
        super().__init__(dataset, device=device, **kwargs)
        self.loader.collate_fn = collate_encoded  # before the first iteration starts the workers
        decode = BatchDecoder(dataset, device=device, decoder=decoder, mean=self.mean, std=self.std, dtype=dtype,
                              channels_last=self.memory_format == torch.channels_last)
        self.loader = DecodedBatches(self.loader, decode, train=self.train)

    def __iter__(self):
        with children_ignore_sigint():  # forks the workers the first time (persistent_workers)
            batches = iter(self.loader)
        for images, targets, corrupt in batches:
            self._report(corrupt)
            yield images, targets.to(self.device, non_blocking=True)


def build_encoded_datasets(root: str, **kwargs) -> tuple[EncodedImageFolder, EncodedImageFolder]:
    """folder.build_datasets (same layout checks, file lists, class indices, transforms), wrapped. The PIL path's
    folders: their v2 transforms are what this loader replays on the device."""
    train, val = build_datasets(root, train_path="pil", **kwargs)
    return EncodedImageFolder(train, train=True), EncodedImageFolder(val, train=False)
