"""What the tests share: the repo's path, a tiny JPEG folder, the argv of a seconds-long CPU run, and the ways to
start pgt-train (or a script) as a user would, in a subprocess."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Optional, Sequence, Union

from pgt_train import benchmarking

REPO = Path(__file__).resolve().parents[1]
JPEG_CLASSES = ("b_square", "a_round", "c_stripe")  # created unsorted: ImageFolder must sort them
TORCHRUN_VARS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")


def make_jpeg_folder(root: Path, *, classes: Sequence[str] = JPEG_CLASSES, train: int = 6, val: int = 3,
                     **options) -> Path:
    """A tiny ImageNet-layout folder of real JPEGs (40-71 px sides); each class has its own dominant colour, so it
    is learnable. `options`: benchmarking.make_jpeg_folder's (colours, sides, noise, seed, ...)."""
    return benchmarking.make_jpeg_folder(root, classes=classes, train=train, val=val, **options)


def tiny_run_args(run_dir: Optional[Path], *overrides, root: Optional[Path] = None, config: Union[str, Path] = "/dev/null",
                  model: str = "resnet18", classes: int = 4, img_size: int = 16, batch: int = 8, train_size: int = 32,
                  val_size: int = 16, workers: int = 0, epochs: int = 2, warmup: int = 1, lr: Optional[float] = 0.02,
                  alpha: Optional[float] = 0.3) -> list[str]:
    """pgt-train argv for a seconds-long CPU run. Synthetic images unless `root` names an ImageFolder (then the
    torchvision loader reads it and train_size/val_size do not apply). lr or alpha None: the config's own value.
    `overrides` (keys or options) come last and win."""
    data = ([f"data.root={root}"] if root is not None else
            ["data.loader=synthetic", f"data.train_size={train_size}", f"data.val_size={val_size}"])
    args = ["--config", str(config), *data, f"model.name={model}", f"model.num_classes={classes}",
            f"data.img_size={img_size}", f"data.batch_size={batch}", f"data.workers={workers}",
            f"sched.epochs={epochs}", f"sched.warmup_epochs={warmup}", "run.progress=false"]
    args += [] if lr is None else [f"optim.lr={lr}"]
    args += [] if alpha is None else [f"pgt.alpha={alpha}"]
    args += [] if run_dir is None else [f"run.dir={run_dir}"]
    return [*args, *map(str, overrides)]


def python_env(threads: int, env_extra: Optional[dict] = None) -> dict:
    """This environment without torchrun's variables (a child must not think it is a rank), with `threads`
    OpenMP threads. One by default: these models are tiny, and OpenMP threads that spin-wait for a core held
    by another process made a 1-second run take 17 s on this 2-core machine (measured under load 4)."""
    clean = {k: v for k, v in os.environ.items() if k not in TORCHRUN_VARS}
    return {**clean, "OMP_NUM_THREADS": str(threads), **(env_extra or {})}


def start_python(*args, threads: int = 1, env_extra: Optional[dict] = None) -> subprocess.Popen:
    """`python <args>` in the repo, output captured as text; pair with finish()."""
    return subprocess.Popen([sys.executable, *map(str, args)], cwd=REPO, env=python_env(threads, env_extra),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def finish(proc: subprocess.Popen, timeout: float = 300) -> subprocess.CompletedProcess:
    """Waits for `proc`; past `timeout` it is killed (as subprocess.run does) and TimeoutExpired raised."""
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()
        raise
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def run_python(*args, threads: int = 1, env_extra: Optional[dict] = None, timeout: float = 300):
    """`python <args>` in the repo (a script path, or "-m", module), run to the end."""
    return finish(start_python(*args, threads=threads, env_extra=env_extra), timeout)


def start_cli(*args, threads: int = 1, env_extra: Optional[dict] = None) -> subprocess.Popen:
    """`python -m pgt_train <args>` as a user starts it; pair with finish()."""
    return start_python("-m", "pgt_train", *args, threads=threads, env_extra=env_extra)


def run_cli(*args, threads: int = 1, env_extra: Optional[dict] = None, timeout: float = 300):
    """`python -m pgt_train <args>` as a user runs it, in a subprocess."""
    return finish(start_cli(*args, threads=threads, env_extra=env_extra), timeout)


def start_torchrun(nproc: int, args: Sequence, *, threads: int = 1) -> subprocess.Popen:
    """pgt_train under `python -m torch.distributed.run --standalone` with `nproc` processes (gloo on the CPU),
    one thread each; nproc 1 is a plain process. Pair with finish()."""
    if nproc == 1:
        return start_cli(*args, threads=threads)
    return start_python("-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}", "-m",
                        "pgt_train", *args, threads=threads)


def run_torchrun(nproc: int, args: Sequence, *, threads: int = 1, timeout: float = 300):
    return finish(start_torchrun(nproc, args, threads=threads), timeout)
