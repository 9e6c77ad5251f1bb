"""SGD with timm's parameter groups, and warmup + step/cosine schedules set every iteration or every epoch."""
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


class ScheduleClock:
    """Maps the engine's global optimizer step to the time of a schedule built in `unit` steps per epoch.

    per_epoch (unit 1): timm's t_in_epochs=True behaviour, the LR set once per epoch (the authors' train.py
    steps its scheduler once per epoch). epoch_shift: from epoch 1 on, the schedule is read one epoch ahead,
    as the authors' loop did (train.py:398 increments the epoch, :426 steps the scheduler to epoch + 1), so
    epoch 0 trains at the schedule's value for 0 and epoch e >= 1 at its value for e + 1.
    state_dict/load_state_dict pass through for checkpoints (the schedule is a function of the step).
    """

    def __init__(self, inner: Scheduler, steps_per_epoch: int, *, per_epoch: bool, epoch_shift: bool):
        self.inner, self.steps_per_epoch = inner, steps_per_epoch
        self.per_epoch, self.epoch_shift = per_epoch, epoch_shift

    def schedule_time(self, num_updates: int) -> int:
        epoch = num_updates // self.steps_per_epoch
        t = epoch if self.per_epoch else num_updates
        if self.epoch_shift and epoch >= 1:
            t += 1 if self.per_epoch else self.steps_per_epoch
        return t

    def step_update(self, num_updates: int, metric=None) -> None:
        self.inner.step_update(self.schedule_time(num_updates), metric)

    def state_dict(self) -> dict:
        return self.inner.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self.inner.load_state_dict(state)


def build_scheduler(optimizer: torch.optim.Optimizer, *, name: str, epochs: int, warmup_epochs: int,
                    warmup_lr: float, milestones: tuple[int, ...], gamma: float, min_lr: float,
                    steps_per_epoch: int, update: str = "step", cooldown_epochs: int = 0,
                    warmup_prefix: bool = True, epoch_shift: bool = False) -> Scheduler | ScheduleClock:
    """Call .step_update(global_step) before each optimizer step.

    Warmup is linear from warmup_lr over warmup_epochs. cosine decays from the peak to min_lr and holds
    min_lr for the last cooldown_epochs (counted inside `epochs`, as timm's 90 + 10 cooldown = 100); with
    warmup_prefix the cosine starts when warmup ends, without it the cosine is a function of the epoch from 0
    and warmup overwrites its start (timm's default). step multiplies by gamma at each milestone epoch,
    milestones counted from the start of training, warmup included, as the paper's 30/60/90 (no cooldown).
    update="step" sets the LR every optimizer step; "epoch" holds each epoch at the schedule's value at its start.
    epoch_shift: epochs >= 1 take the schedule's value one epoch later (the authors' loop, see ScheduleClock).
    """
    unit = steps_per_epoch if update == "step" else 1  # schedule time steps per epoch
    common = dict(warmup_t=warmup_epochs * unit, warmup_lr_init=warmup_lr, t_in_epochs=False)
    if name == "cosine":
        cosine_epochs = epochs - cooldown_epochs - (warmup_epochs if warmup_prefix else 0)
        sched = CosineLRScheduler(optimizer, t_initial=cosine_epochs * unit, lr_min=min_lr,
                                  warmup_prefix=warmup_prefix, cycle_limit=1, **common)
    elif name == "step":
        # timm applies milestone m at schedule index m - 1; +1 makes epoch 30's first step the first decayed one.
        sched = MultiStepLRScheduler(optimizer, decay_t=[m * unit + 1 for m in milestones],
                                     decay_rate=gamma, warmup_prefix=False, **common)
    else:
        raise ValueError(f"unknown schedule '{name}' (valid: step, cosine)")
    if update not in ("step", "epoch"):
        raise ValueError(f"unknown sched.update '{update}' (valid: step, epoch)")
    if update == "step" and not epoch_shift:
        return sched
    return ScheduleClock(sched, steps_per_epoch, per_epoch=update == "epoch", epoch_shift=epoch_shift)


def current_lr(optimizer: torch.optim.Optimizer) -> float:
    return optimizer.param_groups[0]["lr"]
