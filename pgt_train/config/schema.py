"""The run's configuration as a frozen dataclass tree: every key with its type (the annotation), default, choices,
range, whether it defines a run, and a one-line doc, declared once on its field (fields.param). Adding a key is
one field here plus its row in docs/configuration.md; validation and run identity read the field."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Literal, Optional

import yaml

from pgt_train.config.fields import keys, param, section
from pgt_train.pgt import AUTHORS_FP16 as PGT_AUTHORS_FP16, FORMS as PGT_FORMS, IMPLS as PGT_IMPLS

# LRs: any positive float32. A diverging LR is the non-finite check's job (exit 3); tests drive it with 1e30.
LR_RANGE = "[0, 1e30]"
EPOCHS = "[0, 100000]"
COUNT_2_31 = "[0, 2^31]"


@dataclass(frozen=True)
class ModelConfig:
    name: str = param("resnet50", doc="any timm model name")
    norm: str = param("bn", choices=("bn", "none"), doc="none: every norm layer replaced by identity")
    # 10^8 classes would exhaust memory building the head; ImageNet-21k has 21,841
    num_classes: int = param(1000, range="[2, 100000]", doc="classes of the head; must match the class folders")
    dtype: str = param("float32", choices=("float32", "float64"),
                       doc="parameter dtype; float64 for exactness checks on the CPU (needs amp.dtype none)")
    channels_last: Optional[bool] = param(None, defining=False, doc="memory layout; None: on for CUDA, off on the CPU")
    sync_bn: bool = param(False, doc="convert BatchNorm to SyncBatchNorm under DDP")
    init_from: Optional[str] = param(None, doc="start from these weights (.pth checkpoint or .safetensors)")
    zero_init_last: bool = param(True, doc="zero-init the last BN gamma of each residual branch (timm's default)")


@dataclass(frozen=True)
class DemoConfig:
    """Procedurally generated JPEG ImageFolder written to data.root before training (no download)."""
    enabled: bool = param(False, doc="generate the demo dataset into data.root first")
    # the dataset's own seed, so that runs with different `seed` share one generated dataset
    seed: int = param(0, range="[0, 2^63)", doc="the dataset's seed")
    classes: int = param(10, range="[2, 1000]", doc="classes (= model.num_classes)")
    train_per_class: int = param(300, range="[1, 100000]", doc="train images per class")
    val_per_class: int = param(60, range="[1, 100000]", doc="val images per class")
    image_size: int = param(72, range="[16, 1024]", doc="stored JPEG side; training crops data.img_size from it")
    difficulty: float = param(0.5, range="[0, 1]", doc="0: easy, 1: hard")


@dataclass(frozen=True)
class DataConfig:
    # where the images lie; which data it is shows in model.num_classes, data.img_size, data.demo.*
    root: Optional[str] = param(None, defining=False, doc="ImageFolder root holding train/ and val/")
    loader: str = param("torchvision", choices=("torchvision", "nvjpeg", "dali", "synthetic"),
                        doc="torchvision | nvjpeg (decode on the device) | dali | synthetic")
    batch_size: int = param(1024, range="[1, 2^20]", doc="GLOBAL batch: each of W processes takes batch_size / W")
    # The same global batch per optimizer step; like the GPU count (which no config records) it changes only how
    # many images each BatchNorm sees at once, so it does not define the run.
    accum_steps: int = param(1, range="[1, 1024]", defining=False, doc="micro-batches per optimizer step")
    workers: int | Literal["auto"] = param("auto", range="[0, 256]", defining=False,
                                           doc="loader processes per rank; auto: this rank's share of its cores")
    img_size: int = param(224, range="[8, 4096]", doc="train crop and val crop side")
    # and >= data.img_size: the center crop must fit inside the resized image (validate.py)
    val_resize: Optional[int] = param(None, range="[8, 8192]", doc="val resize; None: img_size * 256 / 224")
    val_interpolation: str = param("bilinear", choices=("bilinear", "bicubic", "model"),
                                   doc="val resize filter; model: the authors' timm fork's filter for model.name")
    crop_scale: tuple[float, float] = param((0.08, 1.0), range="(0, 1]", doc="RandomResizedCrop area range")
    crop_ratio: tuple[float, float] = param((3 / 4, 4 / 3), range="(0, 100]", doc="RandomResizedCrop aspect range")
    train_crop: str = param("random_resized", choices=("random_resized", "pad_crop"),
                            doc="random_resized (ImageNet) | pad_crop (CIFAR; torchvision loader only)")
    train_size: int = param(12800, range="[1, 2^30]", doc="synthetic only: images per epoch")
    val_size: int = param(1000, range="[1, 2^30]", doc="synthetic only: val images")
    dali_device: Optional[str] = param(None, choices=("gpu", "cpu", None), defining=False,
                                       doc="gpu | cpu; None: gpu when CUDA is present")
    # auto, then decoders.BACKENDS' names; not imported from there because the data package imports this
    # module (tests/test_config.py holds the two lists equal)
    decoder: str = param("auto", choices=("auto", "torchvision", "torchcodec", "pil", "nvimgcodec"), defining=False,
                         doc="data.loader nvjpeg's JPEG decoder: auto (the first that imports) or a backend")
    skip_corrupt: bool = param(True, defining=False, doc="skip an undecodable image with a warning (False: stop)")
    demo: DemoConfig = section(DemoConfig, doc="the procedural demo dataset")


@dataclass(frozen=True)
class OptimConfig:
    lr: float = param(0.4, range="(0, 1e30]", doc="absolute peak LR for the global batch")
    momentum: float = param(0.9, range="[0, 1)", doc="SGD momentum")
    nesterov: bool = param(True, doc="Nesterov momentum (needs momentum > 0)")
    weight_decay: float = param(5e-4, range="[0, 1]", doc="L2 weight decay")
    decay_norm_and_bias: bool = param(False, doc="False: timm's default, no decay on norm parameters and biases")


@dataclass(frozen=True)
class SchedConfig:
    name: str = param("cosine", choices=("step", "cosine"), doc="step | cosine")
    epochs: int = param(100, range="[1, 100000]", doc="total, warmup and cooldown included")
    warmup_epochs: int = param(5, range=EPOCHS, doc="linear from warmup_lr to optim.lr")
    warmup_lr: float = param(4e-4, range=LR_RANGE, doc="LR at the start of warmup")
    milestones: tuple[int, ...] = param((30, 60, 90), range="[1, 100000]",
                                        doc="step only: epochs (counted from 0, warmup included)")
    gamma: float = param(0.1, range="(0, 1]", doc="step only: LR factor at each milestone")
    min_lr: float = param(0.0, range=LR_RANGE, doc="cosine only: LR at the end of the cosine and in the cooldown")
    update: str = param("step", choices=("step", "epoch"),
                        doc="step: LR set every optimizer step | epoch: held for each epoch (timm's t_in_epochs)")
    cooldown_epochs: int = param(0, range=EPOCHS, doc="cosine only: the last N of `epochs` held at min_lr")
    warmup_prefix: bool = param(True, doc="cosine only: true starts the cosine when warmup ends")
    epoch_shift: bool = param(False, doc="true: epoch e >= 1 trains at the schedule's value for e + 1 (authors' loop)")


@dataclass(frozen=True)
class TwinOfConfig:
    """pgt.form temperature: the PGT-side values of the keys the twin scales (config/twin.py fills them in once,
    so that a run's config.yaml read back is checked rather than scaled twice)."""
    lr: Optional[float] = param(None, range=LR_RANGE, doc="PGT's optim.lr (the twin trains at lr / alpha)")
    warmup_lr: Optional[float] = param(None, range=LR_RANGE, doc="PGT's sched.warmup_lr (twin: / alpha)")
    min_lr: Optional[float] = param(None, range=LR_RANGE, doc="PGT's sched.min_lr (twin: / alpha)")
    weight_decay: Optional[float] = param(None, range="[0, 1]", doc="PGT's optim.weight_decay (twin: x alpha)")
    clip_value: Optional[float] = param(None, range="(0, 1e6]", doc="PGT's clip.value (twin: x alpha)")


@dataclass(frozen=True)
class PGTConfig:
    alpha: Optional[float] = param(None, range="(0, 1]", doc="PGT's alpha; None: PGT off (plain cross-entropy)")
    impl: str = param("exact", choices=PGT_IMPLS, doc="exact (Eq. 8) | authors (fp16-rounded p) | official (hook)")
    authors_fp16: str = param("p", choices=PGT_AUTHORS_FP16, doc="impl authors only: which fp16 steps are reproduced")
    form: str = param("backward", choices=PGT_FORMS,
                      doc="backward: PGT on the gradient | temperature: cross-entropy on alpha * z (impl exact)")
    # implied by form, alpha and the scaled values, so not part of what makes a run
    twin_of: TwinOfConfig = section(TwinOfConfig, defining=False, doc="form temperature: the PGT-side values, filled in")


@dataclass(frozen=True)
class LossConfig:
    # not torch's [0, 1]: at 1 the target is uniform and nothing is learned
    label_smoothing: float = param(0.0, range="[0, 1)", doc="smoothing epsilon")


@dataclass(frozen=True)
class ClipConfig:
    mode: str = param("none", choices=("none", "norm", "value", "agc"),
                      doc="timm's dispatch_clip_grad, on unscaled gradients")
    value: float = param(1.0, range="(0, 1e6]", doc="max norm, max |g|, or AGC's clipping factor lambda")


@dataclass(frozen=True)
class AmpConfig:
    dtype: str = param("fp16", choices=("fp16", "bf16", "none"),
                       doc="fp16 (with GradScaler) | bf16 | none; the CPU always trains in fp32")


@dataclass(frozen=True)
class RunConfig:
    dir: str = param("runs/default", doc="the run folder")
    device: str = param("auto", choices=("auto", "cpu", "cuda"), doc="auto | cpu | cuda")
    log_interval: int = param(50, range="[1, 2^31]", doc="steps between host syncs for progress and non-finite checks")
    compile: bool = param(False, doc="torch.compile the model")
    progress: bool = param(True, doc="rank 0 progress bar")
    max_nonfinite_steps: int = param(100, range="[1, 2^31]", doc="consecutive non-finite losses before the run stops")
    checkpoint_every: int = param(0, range=COUNT_2_31, doc="steps between mid-epoch last.pth writes; 0: epoch end")
    dist_timeout_s: int = param(600, range="[1, 86400]",
                                doc="DDP: the longest a collective (or rank 0 alone) may take before the job ends")


@dataclass(frozen=True)
class DiagConfig:
    """The paper's Figs. 5-8 diagnostics, measured on rank 0 (see diagnostics.py)."""
    interval: int = param(200, range=COUNT_2_31, doc="optimizer steps between filter/feature norm snapshots; 0: off")
    zero_threshold: float = param(1e-3, range="[0, 1e6]", doc="L2 norm below which a filter or feature is zeroed out")


@dataclass(frozen=True)
class Config:
    seed: int = param(0, range="[0, 2^63)", doc="seeds weights, data order and augmentation")
    model: ModelConfig = section(ModelConfig, doc="the network")
    data: DataConfig = section(DataConfig, doc="images, loader, batch")
    optim: OptimConfig = section(OptimConfig, doc="SGD")
    sched: SchedConfig = section(SchedConfig, doc="the LR schedule")
    pgt: PGTConfig = section(PGTConfig, doc="the PowerGrad Transform")
    loss: LossConfig = section(LossConfig, doc="the loss")
    clip: ClipConfig = section(ClipConfig, doc="gradient clipping")
    amp: AmpConfig = section(AmpConfig, doc="mixed precision")
    # where and how a run executes (folder, device, cadence, patience), never what it trains
    run: RunConfig = section(RunConfig, defining=False, doc="where and how the run executes")
    # the diagnostics measure the model; they do not change it
    diag: DiagConfig = section(DiagConfig, defining=False, doc="the paper's diagnostics")


# Tables derived from the fields, for code and tests that look a key up by its dotted name.
CHOICES = {k.name: k.meta["choices"] for k in keys(Config) if k.meta.get("choices") is not None}
RANGES = {k.name: k.meta["range"] for k in keys(Config) if k.meta.get("range") is not None}
NOT_DEFINING = tuple(k.name for k in keys(Config) if not k.defining)


def to_dict(cfg) -> dict:
    """Plain dict of builtins (tuples become lists) for YAML, checkpoints and reports."""
    def plain(v):
        if isinstance(v, dict):
            return {k: plain(x) for k, x in v.items()}
        if isinstance(v, (list, tuple)):
            return [plain(x) for x in v]
        return v
    return plain(dataclasses.asdict(cfg))


def to_yaml(cfg) -> str:
    return yaml.safe_dump(to_dict(cfg), sort_keys=False, default_flow_style=False)
