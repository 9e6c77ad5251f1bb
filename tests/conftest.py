import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

REPO = Path(__file__).resolve().parents[1]


def make_jpeg_folder(root: Path, *, classes=("b_square", "a_round", "c_stripe"), train=6, val=3, seed=0) -> Path:
    """A tiny ImageNet-layout folder of real JPEGs; each class has its own dominant colour, so it is learnable."""
    rng = np.random.default_rng(seed)
    for split, n in (("train", train), ("val", val)):
        for c, name in enumerate(classes):
            folder = root / split / name
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(n):
                h, w = rng.integers(40, 72, size=2)
                base = np.zeros(3)
                base[c % 3] = 200
                pixels = np.clip(base + rng.normal(0, 40, (h, w, 3)), 0, 255).astype(np.uint8)
                Image.fromarray(pixels).save(folder / f"{split}_{i}.jpg", quality=90)
    return root


@pytest.fixture(scope="session")
def jpeg_folder(tmp_path_factory) -> Path:
    return make_jpeg_folder(tmp_path_factory.mktemp("jpegs"))


def run_cli(*args, env_extra=None, timeout=300) -> subprocess.CompletedProcess:
    """Runs `python -m pgt_train` as a user would, in a subprocess."""
    env = {**os.environ, "OMP_NUM_THREADS": "2", **(env_extra or {})}
    return subprocess.run([sys.executable, "-m", "pgt_train", *map(str, args)], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=timeout)
