"""Models by timm name; `norm: none` builds them without normalisation layers (the paper's non-BN ResNet)."""
from __future__ import annotations

import timm
import torch
import torch.nn.functional as F
from timm.utils import unwrap_model as unwrap  # noqa: F401  (DDP .module / compile ._orig_mod -> plain)
from torch import nn

from pgt_train.config import ConfigError

NORM_TYPES = (nn.modules.batchnorm._BatchNorm, nn.GroupNorm, nn.LayerNorm, nn.LocalResponseNorm)


# Validation resize of the paper's models as the authors' timm fork resolves it (where each value comes from:
# docs/fidelity.md, data.val_interpolation); today's timm has other defaults.
AUTHORS_VAL_CFG = {"resnet18": ("bilinear", 0.875), "resnet50": ("bicubic", 0.875), "resnet101": ("bicubic", 0.875),
                   "seresnet18": ("bicubic", 0.875), "seresnet50": ("bicubic", 0.875)}


def model_val_cfg(name: str) -> tuple[str, float]:
    """(interpolation, crop_pct) of `name`'s validation resize, for data.val_interpolation: model.

    The paper's models: the authors' fork (AUTHORS_VAL_CFG). Any other timm model: the default pretrained_cfg
    timm's registry holds for it (read without weights: nothing downloads), bicubic / 0.875 where it names
    none, as timm's resolve_data_config falls back.
    """
    if name in AUTHORS_VAL_CFG:
        return AUTHORS_VAL_CFG[name]
    cfg = timm.models.get_pretrained_cfg(name)
    interpolation = getattr(cfg, "interpolation", None)
    crop_pct = getattr(cfg, "crop_pct", None) or 0.875
    return (interpolation if interpolation in ("bilinear", "bicubic") else "bicubic"), crop_pct


class CifarBasicBlock(nn.Module):
    """3x3-3x3 residual block; the shortcut of a downsampling block is option A of He et al. (2016): stride-2
    subsampling and zero channels, no parameters, as in the authors' fork (docs/fidelity.md)."""

    def __init__(self, in_planes: int, planes: int, stride: int, norm: type[nn.Module]):
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = norm(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=1, padding=1, bias=False)
        self.bn2 = norm(planes)
        self.pad = (planes - in_planes) // 2 if stride != 1 or in_planes != planes else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.bn2(self.conv2(F.relu(self.bn1(self.conv1(x)))))
        # (N, C, H, W) -> (N, C + 2·pad, H/2, W/2): subsample and zero-pad the channels
        shortcut = x if self.pad is None else F.pad(x[:, :, ::2, ::2], (0, 0, 0, 0, self.pad, self.pad))
        return F.relu(out + shortcut)


class CifarResNet(nn.Module):
    """He et al.'s CIFAR ResNet-(6n+2): a 16-channel stem, three stages of n blocks at 16/32/64 channels and
    32/16/8 px, global average pool, linear head; Kaiming-normal conv and linear weights. ResNet-20 is n = 3,
    as in the authors' fork (docs/fidelity.md). Input (N, 3, 32, 32)."""

    def __init__(self, blocks_per_stage: int, num_classes: int = 10, norm_layer: type[nn.Module] = nn.BatchNorm2d):
        super().__init__()
        self.num_classes = num_classes
        self.conv1 = nn.Conv2d(3, 16, 3, stride=1, padding=1, bias=False)
        self.bn1 = norm_layer(16)
        stages, in_planes = [], 16
        for planes, stride in ((16, 1), (32, 2), (64, 2)):
            blocks = []
            for i in range(blocks_per_stage):
                blocks.append(CifarBasicBlock(in_planes, planes, stride if i == 0 else 1, norm_layer))
                in_planes = planes
            stages.append(nn.Sequential(*blocks))
        self.layer1, self.layer2, self.layer3 = stages
        self.fc = nn.Linear(64, num_classes)
        for m in self.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                nn.init.kaiming_normal_(m.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.layer3(self.layer2(self.layer1(F.relu(self.bn1(self.conv1(x))))))
        return self.fc(x.mean((2, 3)))  # (N, 64, 8, 8) -> (N, 64) -> (N, num_classes)


# Models timm does not have, by name: the CIFAR ResNets of Fig. 13 (blocks per stage)
CIFAR_RESNETS = {"resnet20": 3, "resnet32": 5, "resnet44": 7, "resnet56": 9}


def count_norm_layers(model: nn.Module) -> int:
    return sum(isinstance(m, NORM_TYPES) for m in model.modules())


def build_model(name: str, *, num_classes: int, norm: str = "bn", zero_init_last: bool = True) -> nn.Module:
    """timm.create_model with random init (nothing is downloaded); resnet20/32/44/56: CifarResNet.

    norm="none" passes norm_layer=nn.Identity, which timm's ResNet family (resnet*, seresnet*) accepts;
    its init then skips the zero-init of the last BN gamma, as there is none. zero_init_last=False keeps
    that gamma at 1 (timm's ResNet zero_init_last argument), as the authors' code effectively did.
    """
    if name in CIFAR_RESNETS:
        if not zero_init_last:
            raise ConfigError(f"model.zero_init_last: false: {name} has no zero-init to turn off (CIFAR ResNet)")
        norm_layer = nn.Identity if norm == "none" else nn.BatchNorm2d
        return CifarResNet(CIFAR_RESNETS[name], num_classes=num_classes, norm_layer=norm_layer)
    if name not in timm.list_models():
        near = timm.list_models(f"*{name}*")[:5]
        hint = f" (similar: {', '.join(near)})" if near else ""
        raise ConfigError(f"model.name: '{name}' is not a timm model{hint}")
    kwargs = {"norm_layer": nn.Identity} if norm == "none" else {}
    if not zero_init_last:  # passed only when off: models outside the ResNet family do not take it
        kwargs["zero_init_last"] = False
    try:
        model = timm.create_model(name, pretrained=False, num_classes=num_classes, **kwargs)
    except TypeError as e:
        key = "model.norm: none" if norm == "none" else "model.zero_init_last: false"
        raise ConfigError(f"{key} needs a model that takes {', '.join(kwargs)} (timm ResNets); {name}: {e}") from None
    if norm == "none" and count_norm_layers(model):
        raise ConfigError(f"model.norm: none: {name} still has {count_norm_layers(model)} norm layers")
    return model


def prepare(model: nn.Module, *, device: torch.device, channels_last: bool, sync_bn: bool,
            world_size: int, compile: bool) -> tuple[nn.Module, nn.Module]:
    """Moves, converts and wraps. Returns (model to train, the plain model for eval and checkpoints)."""
    if sync_bn and world_size > 1:
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    model = model.to(device, memory_format=torch.channels_last if channels_last else torch.contiguous_format)
    plain = model
    if world_size > 1:
        model = nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None)
    if compile:
        model = torch.compile(model)
    return model, plain
