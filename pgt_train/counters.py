"""Where a run stands: one set of counters, saved whole in every checkpoint and restored whole by a resume.

Every counter counts finished work, from 0. All the arithmetic on them lives here.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass


@dataclass
class Counters:
    """Finished work: `epochs_done` whole epochs (so also the 0-based index of the epoch in progress, and the
    number, from 1, of an epoch once it ends), `steps_done` optimizer steps in all, `epoch_steps_done` of them in
    the epoch in progress; `best_epoch` is what `epochs_done` was when val top-1 reached `best_top1` (0 and -1.0:
    none yet)."""
    epochs_done: int = 0
    steps_done: int = 0
    epoch_steps_done: int = 0
    best_top1: float = -1.0
    best_epoch: int = 0

    def steps_left(self, steps_per_epoch: int) -> int:
        """Optimizer steps still to train in the epoch in progress."""
        return steps_per_epoch - self.epoch_steps_done

    def skip_batches(self, accum_steps: int) -> int:
        """Micro-batches of the epoch in progress already trained (what the loader skips on a resume). A step
        trains one global batch whatever its split, so a resume under another data.accum_steps skips the
        same images."""
        return self.epoch_steps_done * accum_steps

    def count_step(self) -> None:
        self.steps_done += 1
        self.epoch_steps_done += 1

    def count_epoch(self, val_top1: float) -> bool:
        """Closes the epoch in progress; True if its val top-1 is the best so far."""
        self.epochs_done += 1
        self.epoch_steps_done = 0
        if not val_top1 > self.best_top1:  # NaN is never best
            return False
        self.best_top1, self.best_epoch = val_top1, self.epochs_done
        return True

    def misfit(self, steps_per_epoch: int) -> str | None:
        """Why these counters are not a point of a run of `steps_per_epoch` steps per epoch, or None."""
        if not 0 <= self.epoch_steps_done < steps_per_epoch:
            return f"{self.epoch_steps_done} steps of an epoch of {steps_per_epoch} done"
        if self.steps_done != self.epochs_done * steps_per_epoch + self.epoch_steps_done:
            return (f"step {self.steps_done} is not epoch {self.epochs_done} x {steps_per_epoch} steps + "
                    f"{self.epoch_steps_done}")
        return None

    def state_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_state_dict(cls, state: dict) -> "Counters":
        """Raises ValueError naming the field whose value is missing or of the wrong type."""
        values = {}
        for field in dataclasses.fields(cls):
            value = state.get(field.name) if isinstance(state, dict) else None
            wanted = (int, float) if field.type == "float" else (int,)
            if isinstance(value, bool) or not isinstance(value, wanted):
                raise ValueError(f"counters.{field.name}={value!r} is not {'a number' if field.type == 'float' else 'an integer'}")
            values[field.name] = float(value) if field.type == "float" else value
        return cls(**values)
