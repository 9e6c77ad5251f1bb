"""Procedural ImageFolder dataset for the CPU demo and the proxy study.

Writes real JPEG files as ``<root>/{train,val}/<class_name>/*.jpg`` so the demo
runs through exactly the ImageNet loading path (torchvision ImageFolder).

Why it looks the way it does: a small generated set is useless if a ResNet can
memorise it (train 100%, val at chance) or separate it trivially (both 100%).
Here every class is a *combination* of three attributes of one foreground
object -- shape, stripe frequency (texture) and hue -- and no single attribute
identifies the class. Each image then varies strongly (position, scale,
rotation, aspect, background texture, distractor shapes, noise, JPEG quality),
and a per-image blend weight ``w ~ U(0, difficulty)`` pulls the object's
attributes toward a neighbouring class, so class-conditional distributions
overlap and the Bayes accuracy is below 100%.

Determinism: every image has its own numpy Generator seeded from
``(seed, split, class, index)``, so output bytes do not depend on worker count
or generation order.
"""

import argparse
import inspect
import json
import multiprocessing
import os
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

from pgt_train.config import DemoConfig

# Bump when the rendering changes, so cached datasets are regenerated.
GENERATOR_VERSION = 1
# Written last into a folder the generator made: the folder is its own, and so are the files listed inside.
MARKER = ".pgt-demo.json"
LEGACY_PARAMS_FILE = "demo_params.json"  # the marker before version 0.1 (same images; file list implied)
SPLITS = ("train", "val")

SHAPES = ("circle", "square", "triangle", "star", "cross")
# Stripe frequencies in cycles per object radius (object coordinates).
STRIPE_FREQS = (0.5, 1.3, 2.2)
GOLDEN = 0.6180339887  # spreads class hues evenly around the colour wheel


def class_prototype(c):
    """Attributes of class ``c``: (shape index, stripe frequency, hue in [0, 1)).

    Shape cycles with period 5 and frequency with period 3, so e.g. classes 0
    and 5 share a shape and differ in hue and texture; only the combination
    identifies a class.
    """
    return c % len(SHAPES), STRIPE_FREQS[c % 3], (c * GOLDEN) % 1.0


def class_names(num_classes):
    """Folder names that sort in class order, e.g. ``c03_star``."""
    width = max(2, len(str(num_classes - 1)))
    return [f"c{c:0{width}d}_{SHAPES[class_prototype(c)[0]]}" for c in range(num_classes)]


def hsv_to_rgb(h, s, v):
    """Scalar HSV in [0, 1] -> RGB array of shape (3,)."""
    k = (np.array([5.0, 3.0, 1.0]) + h * 6.0) % 6.0
    return v - v * s * np.clip(np.minimum(k, 4.0 - k), 0.0, 1.0)


def shape_level(shape, u, v):
    """Level function of a unit-sized shape: <= 1 inside. u, v: (S, S) object coords."""
    r = np.hypot(u, v)
    a = np.arctan2(v, u)
    name = SHAPES[shape]
    if name == "circle":
        return r
    if name == "square":
        return np.maximum(np.abs(u), np.abs(v)) / 0.8
    if name == "triangle":
        sector = 2 * np.pi / 3
        return r * np.cos((a % sector) - sector / 2) / np.cos(np.pi / 3)
    if name == "star":
        return r / (0.6 + 0.4 * np.cos(5 * a))
    arm = 0.33  # cross: union of two bars of half-width `arm`
    return np.minimum(np.maximum(np.abs(u) / arm, np.abs(v)), np.maximum(np.abs(v) / arm, np.abs(u)))


def paint_object(img, rng, shape, freq, rgb, center, radius):
    """Alpha-blend a rotated, squashed, striped shape into ``img`` (S, S, 3) in place."""
    size = img.shape[0]
    ys, xs = np.mgrid[0:size, 0:size].astype(np.float32) + 0.5
    angle = rng.uniform(0, 2 * np.pi)
    aspect = rng.uniform(0.75, 1.3)
    dx, dy = (xs - center[0]) / radius, (ys - center[1]) / radius
    u = (np.cos(angle) * dx + np.sin(angle) * dy) * aspect
    v = (-np.sin(angle) * dx + np.cos(angle) * dy) / aspect
    # Soft edge about one pixel wide (anti-aliasing).
    alpha = np.clip((1.0 - shape_level(shape, u, v)) * radius + 0.5, 0.0, 1.0)[..., None]
    stripes = 0.5 + 0.5 * np.sin(2 * np.pi * freq * u + rng.uniform(0, 2 * np.pi))
    fill = rgb * (0.45 + 0.55 * stripes[..., None])
    img *= 1.0 - alpha
    img += alpha * fill


def render_image(rng, label, num_classes, size, difficulty):
    """One image of class ``label`` as uint8 (size, size, 3)."""
    ys, xs = np.mgrid[0:size, 0:size].astype(np.float32) / size
    # Background: two random colours mixed by a random low-frequency wave pattern.
    mix = np.zeros((size, size), np.float32)
    for _ in range(3):
        theta, freq = rng.uniform(0, 2 * np.pi), rng.uniform(0.5, 4.0)
        mix += np.sin(2 * np.pi * freq * (np.cos(theta) * xs + np.sin(theta) * ys) + rng.uniform(0, 2 * np.pi))
    mix = (mix / 6.0 + 0.5)[..., None]
    bg_a = hsv_to_rgb(rng.random(), rng.uniform(0, 0.6), rng.uniform(0.2, 0.9))
    bg_b = hsv_to_rgb(rng.random(), rng.uniform(0, 0.6), rng.uniform(0.2, 0.9))
    img = (bg_a * (1 - mix) + bg_b * mix).astype(np.float32)

    # Clutter: small distractors with the attributes of random classes.
    for _ in range(rng.integers(0, 3)):
        shape, freq, hue = class_prototype(int(rng.integers(num_classes)))
        rgb = hsv_to_rgb(hue, rng.uniform(0.4, 1.0), rng.uniform(0.4, 1.0))
        paint_object(img, rng, shape, freq, rgb, rng.uniform(0.1, 0.9, 2) * size, rng.uniform(0.07, 0.13) * size)

    # Main object: class attributes blended toward a neighbouring class by w.
    shape, freq, hue = class_prototype(label)
    n_shape, n_freq, n_hue = class_prototype((label + rng.choice((-1, 1))) % num_classes)
    w = rng.uniform(0, difficulty)
    if rng.random() < w:
        shape = n_shape
    freq = (1 - w) * freq + w * n_freq + rng.normal(0, 0.15)
    hue_step = (n_hue - hue + 0.5) % 1.0 - 0.5  # shortest way round the colour wheel
    hue = (hue + w * hue_step + rng.normal(0, 0.03)) % 1.0
    rgb = hsv_to_rgb(hue, rng.uniform(0.5, 1.0), rng.uniform(0.5, 1.0))
    paint_object(img, rng, shape, max(freq, 0.2), rgb, rng.uniform(0.3, 0.7, 2) * size, rng.uniform(0.17, 0.3) * size)

    # Global contrast/brightness jitter and sensor noise.
    img = (img - 0.5) * rng.uniform(0.7, 1.2) + 0.5 + rng.uniform(-0.1, 0.1)
    img += rng.normal(0, rng.uniform(0.0, 0.06), img.shape)
    return (np.clip(img, 0, 1) * 255 + 0.5).astype(np.uint8)


def write_image(job):
    """Render and save one JPEG. job: (out_dir, seed, split_id, label, index, num_classes, size, difficulty)."""
    out_dir, seed, split_id, label, index, num_classes, size, difficulty = job
    rng = np.random.default_rng([seed, split_id, label, index])
    pixels = render_image(rng, label, num_classes, size, difficulty)
    quality = int(rng.integers(35, 96))
    Image.fromarray(pixels, "RGB").save(Path(out_dir) / f"{index:05d}.jpg", "JPEG", quality=quality)


def planned_files(params):
    """Relative paths of the images the generator writes for ``params``, in writing order."""
    names = class_names(params["num_classes"])
    per_split = zip(SPLITS, (params["train_per_class"], params["val_per_class"]))
    return [f"{split}/{name}/{i:05d}.jpg" for split, per_class in per_split for name in names for i in range(per_class)]


def read_marker(root):
    """``{"params": ..., "files": [...]}`` of a folder the generator wrote completely, or None.

    ``files`` lists every file it wrote there, the marker included. A folder from before the marker
    existed carries ``demo_params.json`` instead; its file list follows from the parameters.
    """
    try:
        marker = json.loads((root / MARKER).read_text())
        if isinstance(marker.get("params"), dict) and all(isinstance(f, str) for f in marker["files"]):
            return marker
    except (OSError, ValueError, AttributeError, KeyError, TypeError):
        pass
    try:
        params = json.loads((root / LEGACY_PARAMS_FILE).read_text())
        return {"params": params, "files": [*planned_files(params), LEGACY_PARAMS_FILE]}
    except (OSError, ValueError, AttributeError, KeyError, TypeError):
        return None


def foreign_entry(root, marker):
    """The first path under ``root`` that the generator did not write (per ``marker``; None: nothing is
    its), or None when everything there is the generator's. Symlinks are never the generator's."""
    files = set(marker["files"]) if marker else set()
    folders = {parent.as_posix() for f in files for parent in Path(f).parents} - {"."}
    for folder, dirs, names in os.walk(root):
        rel = Path(folder).relative_to(root)
        for name in sorted(dirs) + sorted(names):
            path = (rel / name).as_posix()
            ours = folders if name in dirs else files
            if path not in ours or os.path.islink(os.path.join(folder, name)):
                return path
    return None


def remove_generated(root, marker):
    """Deletes the files ``marker`` lists and then their folders, which must then be empty (rmdir, never
    rmtree): a file that appeared meanwhile makes this fail rather than go."""
    for f in marker["files"]:
        (root / f).unlink(missing_ok=True)
    folders = {parent for f in marker["files"] for parent in Path(f).parents} - {Path(".")}
    for folder in sorted(folders, key=lambda p: len(p.parts), reverse=True):
        if (root / folder).exists():
            (root / folder).rmdir()
    root.rmdir()


def write_dataset(out, params, workers):
    """Renders every image of ``params`` into the new folder ``out``, then the marker that claims them."""
    jobs = []
    names = class_names(params["num_classes"])
    for split_id, (split, per_class) in enumerate(zip(SPLITS, (params["train_per_class"], params["val_per_class"]))):
        for label, name in enumerate(names):
            out_dir = out / split / name
            out_dir.mkdir(parents=True)
            jobs += [(str(out_dir), params["seed"], split_id, label, i, params["num_classes"], params["image_size"],
                      params["difficulty"]) for i in range(per_class)]
    if workers > 1:
        with multiprocessing.Pool(workers) as pool:
            pool.map(write_image, jobs, chunksize=64)
            pool.close()  # the workers end on their own, so the with's terminate() has no one left to signal
            pool.join()
    else:
        for job in jobs:
            write_image(job)
    marker = {"generator": "pgt_train.data.demo", "params": params, "files": [*planned_files(params), MARKER]}
    (out / MARKER).write_text(json.dumps(marker, indent=1) + "\n")


_DEFAULTS = DemoConfig()  # the one source of the demo's defaults: data.demo.* in the config


def make_demo_dataset(
    root,
    *,
    seed=_DEFAULTS.seed,
    num_classes=_DEFAULTS.classes,
    train_per_class=_DEFAULTS.train_per_class,
    val_per_class=_DEFAULTS.val_per_class,
    image_size=_DEFAULTS.image_size,
    difficulty=_DEFAULTS.difficulty,
    workers=2,
):
    """Generate (once) the demo ImageFolder dataset under ``root``; return ``root`` as a Path.

    Reuses ``root`` when its marker (``.pgt-demo.json``) has these parameters and its files are all there.
    Otherwise builds the dataset in a temporary sibling folder, writes the marker last and renames the
    folder into place, so an interrupted run never leaves a folder that looks complete.

    Never deletes anything it did not write: ``root`` may be missing, empty, or a folder holding only the
    files its marker lists (those are replaced); anything else raises FileExistsError and nothing is
    touched. ``workers`` only changes speed, not output (0 or 1: generate in this process). Call it from
    one process only (e.g. rank 0, then a barrier): concurrent calls on the same root race.

    Class attribute combinations repeat every 15 classes (5 shapes x 3
    frequencies), so beyond 15 classes some pairs differ by hue alone.
    ``difficulty`` in [0, 1]: 0 keeps every object at its class prototype.
    """
    root = Path(root)
    params = {
        "version": GENERATOR_VERSION,
        "seed": seed,
        "num_classes": num_classes,
        "train_per_class": train_per_class,
        "val_per_class": val_per_class,
        "image_size": image_size,
        "difficulty": difficulty,
    }
    marker = read_marker(root)
    if marker and marker["params"] == params and all((root / f).is_file() for f in marker["files"]):
        return root
    if root.exists() or root.is_symlink():
        foreign = foreign_entry(root, marker) if root.is_dir() and not root.is_symlink() else "."
        if foreign is not None:
            what = "it is not a folder" if foreign == "." else f"it holds {foreign}, which the generator did not write"
            raise FileExistsError(f"{root} is not a demo folder ({what}); nothing in it was changed")

    root.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{root.name}.partial-", dir=root.parent))
    tmp.chmod(0o755)  # mkdtemp makes it owner-only; the dataset should be ordinarily readable
    try:
        write_dataset(tmp, params, workers)
        if marker and root.exists():
            remove_generated(root, marker)
        os.replace(tmp, root)  # onto a missing or empty folder
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)  # the temporary folder is ours alone
        raise
    return root


def main(argv=None):
    # CLI defaults come from make_demo_dataset's signature so the two never drift apart.
    defaults = {name: param.default for name, param in inspect.signature(make_demo_dataset).parameters.items()}
    parser = argparse.ArgumentParser(description="Generate the procedural demo ImageFolder dataset.")
    parser.add_argument("root", help="output directory (<root>/train, <root>/val)")
    parser.add_argument("--seed", type=int, default=defaults["seed"])
    parser.add_argument("--classes", type=int, default=defaults["num_classes"])
    parser.add_argument("--train-per-class", type=int, default=defaults["train_per_class"])
    parser.add_argument("--val-per-class", type=int, default=defaults["val_per_class"])
    parser.add_argument("--image-size", type=int, default=defaults["image_size"])
    parser.add_argument("--difficulty", type=float, default=defaults["difficulty"])
    parser.add_argument("--workers", type=int, default=defaults["workers"])
    args = parser.parse_args(argv)
    start = time.perf_counter()
    try:
        root = make_demo_dataset(
            args.root,
            seed=args.seed,
            num_classes=args.classes,
            train_per_class=args.train_per_class,
            val_per_class=args.val_per_class,
            image_size=args.image_size,
            difficulty=args.difficulty,
            workers=args.workers,
        )
    except FileExistsError as e:
        parser.exit(2, f"{parser.prog}: error: {e}; choose a new or empty folder\n")
    counts = {split: sum(1 for _ in (root / split).glob("*/*.jpg")) for split in SPLITS}
    print(
        f"demo dataset at {root.resolve()}: {counts['train']} train + {counts['val']} val images, "
        f"{args.classes} classes ({time.perf_counter() - start:.1f}s)"
    )


if __name__ == "__main__":
    main()
