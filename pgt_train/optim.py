"""SGD with timm's parameter groups, and warmup + step/cosine schedules stepped every iteration."""
from __future__ import annotations

import torch
from timm.optim import create_optimizer_v2
from timm.scheduler import CosineLRScheduler, MultiStepLRScheduler
from timm.scheduler.scheduler import Scheduler
from torch import nn


def build_optimizer(model: nn.Module, *, lr: float, momentum: float, nesterov: bool, weight_decay: float,
                    decay_norm_and_bias: bool) -> torch.optim.Optimizer:
    """timm's 'sgd' is Nesterov SGD, 'momentum' plain; filter_bias_and_bn keeps 1-d params out of decay.

    fused=True: one kernel for the whole update, and it takes the GradScaler's inf check on the device,
    so an fp16 step needs no host sync (the unfused path calls found_inf.item() every step).
    """
    return create_optimizer_v2(
        model, opt="sgd" if nesterov else "momentum", lr=lr, momentum=momentum, weight_decay=weight_decay,
        filter_bias_and_bn=not decay_norm_and_bias, fused=True,
    )


def build_scheduler(optimizer: torch.optim.Optimizer, *, name: str, epochs: int, warmup_epochs: int,
                    warmup_lr: float, milestones: tuple[int, ...], gamma: float, min_lr: float,
                    steps_per_epoch: int) -> Scheduler:
    """Per-iteration schedule: call .step_update(global_step) before each optimizer step.

    Warmup is linear from warmup_lr over warmup_epochs. cosine decays from the peak to min_lr over the
    remaining epochs (timm's warmup_prefix). step multiplies by gamma at each milestone epoch, milestones
    counted from the start of training, warmup included, as the paper's 30/60/90.
    """
    warmup_steps = warmup_epochs * steps_per_epoch
    common = dict(warmup_t=warmup_steps, warmup_lr_init=warmup_lr, t_in_epochs=False)
    if name == "cosine":
        return CosineLRScheduler(optimizer, t_initial=(epochs - warmup_epochs) * steps_per_epoch,
                                 lr_min=min_lr, warmup_prefix=True, **common)
    if name == "step":
        # timm applies milestone m at schedule index m - 1; +1 makes epoch 30's first step the first decayed one.
        return MultiStepLRScheduler(optimizer, decay_t=[m * steps_per_epoch + 1 for m in milestones],
                                    decay_rate=gamma, warmup_prefix=False, **common)
    raise ValueError(f"unknown schedule '{name}' (valid: step, cosine)")


def current_lr(optimizer: torch.optim.Optimizer) -> float:
    return optimizer.param_groups[0]["lr"]
