"""Bad data as users meet it: corrupt files mid-training, odd image modes, broken folder layouts."""
import csv
import os
import shutil
import signal
import socket
import struct
import subprocess
import sys
import time
import zlib

import numpy as np
import pytest
import torch
from PIL import Image

from pgt_train.errors import UserError
from pgt_train.preempt import EXIT_PREEMPTED
from tests.helpers import REPO, run_cli


def tiny(root, run_dir, *extra):
    return ["--config", "/dev/null", f"data.root={root}", "model.name=resnet18", "model.num_classes=3",
            "data.batch_size=6", "data.img_size=32", "data.workers=1", "sched.epochs=1", "sched.warmup_epochs=0",
            "optim.lr=0.05", "run.progress=false", "diag.interval=0", f"run.dir={run_dir}", *extra]


@pytest.fixture
def folder(jpeg_folder, tmp_path):
    root = tmp_path / "data"
    shutil.copytree(jpeg_folder, root)
    return root


@pytest.mark.slow
def test_corrupt_and_truncated_images_are_skipped_and_counted(folder, tmp_path):
    good = (folder / "train" / "a_round" / "train_0.jpg").read_bytes()
    (folder / "train" / "a_round" / "zz_truncated.jpg").write_bytes(good[: len(good) // 3])
    (folder / "train" / "b_square" / "zz_garbage.jpg").write_bytes(b"\x00not a jpeg at all" * 10)
    result = run_cli(*tiny(folder, tmp_path / "run", "data.batch_size=4"))
    assert result.returncode == 0, result.stderr
    assert "skipped corrupt image" in result.stderr
    assert "zz_truncated.jpg" in result.stderr and "zz_garbage.jpg" in result.stderr
    row = next(csv.DictReader(open(tmp_path / "run" / "summary.csv")))
    assert int(row["corrupt_images"]) == 2  # 20 train files, batch 4: all five batches run, both files met
    assert int(row["val_images"]) == 9


@pytest.mark.slow
@pytest.mark.parametrize("split, workers", [("val", 1), ("train", 2)])
def test_corrupt_image_can_be_fatal(folder, tmp_path, split, workers):
    """The error is raised mid-epoch with the loader's workers alive: still one line, exit 2, no hang."""
    (folder / split / "c_stripe" / "broken.jpg").write_bytes(b"garbage")
    result = run_cli(*tiny(folder, tmp_path / "run", "data.skip_corrupt=false", f"data.workers={workers}"),
                     timeout=120)
    assert result.returncode == 2
    assert "corrupt image" in result.stderr and "broken.jpg" in result.stderr and "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


@pytest.mark.slow
def test_grayscale_cmyk_rgba_and_png_are_converted(folder, tmp_path):
    rgb = np.random.default_rng(0).integers(0, 255, (50, 60, 3), dtype=np.uint8)
    target = folder / "train" / "a_round"
    Image.fromarray(rgb).convert("L").save(target / "gray.jpg")
    Image.fromarray(rgb).convert("CMYK").save(target / "cmyk.jpg")
    Image.fromarray(rgb).convert("RGBA").save(target / "rgba.png")
    Image.fromarray(rgb).convert("P").save(target / "palette.png")
    result = run_cli(*tiny(folder, tmp_path / "run", "data.batch_size=3"))
    assert result.returncode == 0, result.stderr
    assert "skipped" not in result.stderr
    row = next(csv.DictReader(open(tmp_path / "run" / "summary.csv")))
    assert int(row["corrupt_images"]) == 0


def break_folder(folder, breakage):
    """Breaks a copy of the tiny JPEG folder (3 classes, 6 train and 3 val images each) in one way."""
    train, val = folder / "train", folder / "val"
    if breakage == "empty_root":
        shutil.rmtree(folder)
        folder.mkdir()
    elif breakage == "empty_class":
        for f in (train / "a_round").iterdir():
            f.unlink()
    elif breakage == "class_mismatch":
        (val / "c_stripe").rename(val / "d_other")
    elif breakage == "class_symlink":  # a 4th class that is a_round again: its images under two labels
        (train / "d_copy").symlink_to("a_round")
        (val / "d_copy").symlink_to("a_round")
    elif breakage == "val_into_train":  # val/c_stripe is train/c_stripe: validation on training images
        shutil.rmtree(val / "c_stripe")
        (val / "c_stripe").symlink_to(train / "c_stripe")
    elif breakage == "val_unreadable":
        for f in val.rglob("*.jpg"):
            f.write_bytes(b"not an image")
    elif breakage == "one_class":  # what no setting of model.num_classes can train (it must be >= 2)
        for split in (train, val):
            shutil.rmtree(split / "b_square")
            shutil.rmtree(split / "c_stripe")
    elif breakage == "root_is_file":
        shutil.rmtree(folder)
        folder.write_bytes(b"not a folder")
    elif breakage == "num_classes":  # 4 good class folders for a model of 3 classes
        shutil.copytree(train / "a_round", train / "d_more")
        shutil.copytree(val / "a_round", val / "d_more")
    else:
        raise ValueError(breakage)


@pytest.mark.parametrize("breakage, message", [
    ("empty_root", "train is missing"),
    ("empty_class", "Found no valid file for the classes"),
    ("class_mismatch", "train/ and val/ have different classes"),
    ("class_symlink", "train/a_round and {root}/train/d_copy are the same folder"),
    ("val_into_train", "val/c_stripe are the same folder ({root}/train/c_stripe): validation would score training"),
    ("val_unreadable", "none of the 9 image files under {root}/val is readable"),
    # model.name is no timm model: the folder check must come first, before any model is built
    ("num_classes", "model.num_classes is 3 but {root}/train has 4 class folders"),
    ("one_class", "{root}/train has one class folder (a_round); classification needs at least 2 class folders"),
    ("root_is_file", "data.root: {root} is a file, not a folder"),
])
@pytest.mark.slow
def test_broken_layouts_exit_2_with_one_line(folder, tmp_path, breakage, message):
    break_folder(folder, breakage)
    result = run_cli(*tiny(folder, tmp_path / "run", "model.name=no_such_timm_model"), timeout=120)
    assert result.returncode == 2, result.stderr
    assert message.format(root=folder) in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and "Traceback" not in result.stderr
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("breakage", ["class_symlink", "val_into_train", "val_unreadable", "num_classes"])
def test_folder_checks_run_before_anything_is_built(folder, breakage):
    from pgt_train.config import DataConfig
    from pgt_train.data import check_folders
    check_folders(DataConfig(root=str(folder)), num_classes=3)  # the sound folder passes
    break_folder(folder, breakage)
    with pytest.raises(UserError, match="data.root|model.num_classes"):
        check_folders(DataConfig(root=str(folder)), num_classes=3)


@pytest.mark.parametrize("breakage, message", [
    ("one_class", "has one class folder (a_round); classification needs at least 2 class folders"),
    ("root_is_file", "is a file, not a folder; point data.root at the folder that holds train/ and val/"),
])
def test_layout_advice_can_be_followed(folder, breakage, message):
    """A one-class folder is told that 2 class folders are needed (model.num_classes=1 is refused by the config);
    a data.root that is a file is told so (not "folder not found")."""
    from pgt_train.data.folder import check_layout
    break_folder(folder, breakage)
    for num_classes in (1, 3):
        with pytest.raises(UserError) as raised:
            check_layout(folder, num_classes)
        assert message in str(raised.value) and "set model.num_classes" not in str(raised.value)


def test_a_class_folder_inside_another_and_one_outside_root(folder, tmp_path):
    from pgt_train.data.folder import check_folder
    outside = tmp_path / "elsewhere" / "e_linked"
    shutil.copytree(folder / "train" / "a_round", outside)  # a class kept outside data.root: allowed
    (folder / "train" / "e_linked").symlink_to(outside)
    shutil.copytree(folder / "val" / "a_round", folder / "val" / "e_linked")
    check_folder(folder, 4)
    shutil.copytree(folder / "train" / "b_square", folder / "train" / "c_stripe" / "sub")
    (folder / "train" / "f_sub").symlink_to(folder / "train" / "c_stripe" / "sub")
    shutil.copytree(folder / "val" / "a_round", folder / "val" / "f_sub")
    with pytest.raises(UserError, match=r"train/f_sub resolves to .*/train/c_stripe/sub, inside .*/train/c_stripe: "
                                        r"its images would be trained under two labels"):
        check_folder(folder, 5)


def test_an_epoch_with_no_val_image_is_refused(folder):
    """The guard at the end of evaluate (a val folder that broke after the start check): exit 2, no result."""
    from pgt_train import engine, models
    from pgt_train.data.folder import SeededImageFolder, val_transform
    from pgt_train.data.torch_loader import TorchLoader
    for f in (folder / "val").rglob("*.jpg"):
        f.write_bytes(b"not an image")
    val = SeededImageFolder(folder / "val", val_transform(32, None), seed=0)
    loader = TorchLoader(val, batch_size=4, train=False, rank=0, world_size=1, seed=0, workers=0,
                         device=torch.device("cpu"), channels_last=False)
    loader.set_epoch(0)
    model = models.build_model("resnet10t", num_classes=3)
    with pytest.raises(UserError, match="validation scored no image"):
        engine.evaluate(model, loader, device=torch.device("cpu"))
    assert loader.take_corrupt_count() == 9


def test_sync_bn_on_the_cpu_is_refused_before_anything_is_built(folder, tmp_path, capsys):
    from pgt_train import cli
    assert cli.main(tiny(folder, tmp_path / "run", "model.sync_bn=true")) == 2
    err = capsys.readouterr().err
    assert "model.sync_bn=true needs CUDA GPUs" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "run").exists()


def test_dali_names_a_train_file_it_cannot_decode(folder):
    pytest.importorskip("nvidia.dali")
    from pgt_train.config import DataConfig
    from pgt_train.data import build_loaders
    from pgt_train.dist import DistInfo
    (folder / "train" / "b_square" / "zz_broken.jpg").write_bytes(b"\xff\xd8\xff not a jpeg" * 20)
    data = DataConfig(root=str(folder), loader="dali", dali_device="cpu", batch_size=6, workers=1, img_size=32)
    train, _ = build_loaders(data, num_classes=3, seed=0, dist=DistInfo(rank=0, world_size=1), channels_last=False)
    train.set_epoch(0)
    with pytest.raises(UserError, match=r"data.loader=dali: cannot decode .*/train/b_square/zz_broken.jpg"):
        for _ in train:
            pass


@pytest.mark.slow
def test_dali_corrupt_val_file_exits_2_naming_it(folder, tmp_path):
    pytest.importorskip("nvidia.dali")
    (folder / "val" / "c_stripe" / "broken.jpg").write_bytes(b"\xff\xd8\xff not a jpeg" * 20)
    result = run_cli(*tiny(folder, tmp_path / "run", "data.loader=dali", "data.dali_device=cpu"), timeout=180)
    assert result.returncode == 2, result.stderr
    last = result.stderr.strip().splitlines()[-1]  # DALI's C++ logger may print its own line before ours
    assert last.startswith("pgt-train: error: data.loader=dali: cannot decode ")
    assert str(folder / "val" / "c_stripe" / "broken.jpg") in last and "Traceback" not in result.stderr
    assert not (tmp_path / "run" / "best.pth").exists()


def png_header(width, height):
    """A tiny PNG file that declares width x height pixels (PIL's bomb check reads only the header)."""
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 8)) + chunk(b"IEND", b"")


@pytest.mark.slow
def test_hostile_files_are_skipped_counted_and_never_block(folder, tmp_path):
    """FIFO, socket, decompression bombs, garbage, symlink loops, a link into another class, an all-corrupt
    val batch: one run with data.workers=2 finishes, counts each unreadable file once, multiplies nothing."""
    cls = folder / "train" / "a_round"
    os.mkfifo(cls / "fifo.jpg")  # opening it would block until a writer comes: never
    with socket.socket(socket.AF_UNIX) as sock:
        sock.bind(str(cls / "sock.jpg"))
    (cls / "bomb.png").write_bytes(png_header(20_000, 20_000))  # > 2x MAX_IMAGE_PIXELS: PIL raises
    (cls / "big.png").write_bytes(png_header(10_000, 10_000))  # > MAX_IMAGE_PIXELS: PIL only warns
    (cls / "zz_garbage1.jpg").write_bytes(b"garbage" * 20)
    (cls / "zz_garbage2.jpg").write_bytes(b"")
    (cls / "loop1").symlink_to(".")  # two loops: os.walk(followlinks=True) alone never ends
    (cls / "loop2").symlink_to(".")
    (cls / "up").symlink_to("..")
    (cls / "steal").symlink_to("../b_square")  # b_square's images must not also be labelled a_round
    for name in ("a_round", "b_square"):  # the first val batch (6 images) is entirely unreadable
        for f in (folder / "val" / name).iterdir():
            f.write_bytes(b"not an image")
    result = run_cli(*tiny(folder, tmp_path / "run", "data.workers=2"), timeout=240)
    assert result.returncode == 0, result.stderr
    assert "4 steps/epoch" in result.stdout  # 18 images + 6 unreadable files = 24 samples, batch 6
    for name in ("fifo.jpg", "sock.jpg", "bomb.png", "big.png", "zz_garbage1.jpg", "zz_garbage2.jpg"):
        assert f"skipped corrupt image {cls / name}" in result.stderr
    assert "not a regular file" in result.stderr and "DecompressionBomb" in result.stderr
    assert result.stderr.count("already scanned") == 2  # loop1, loop2
    assert result.stderr.count("overlaps class folder") == 2  # up (holds every class), steal
    row = next(csv.DictReader(open(tmp_path / "run" / "summary.csv")))
    assert int(row["corrupt_images"]) == 6 + 6  # each file once: 6 in train (replaced), 6 in val (dropped)
    assert int(row["val_images"]) == 3


RAISE_WITH_WORKERS = """
import sys, torch
from pgt_train.data.folder import build_datasets
from pgt_train.data.torch_loader import TorchLoader
from pgt_train.preempt import StopRequest
StopRequest()  # the trainer's handlers, as in a run
train, _ = build_datasets(sys.argv[1], num_classes=3, img_size=32, val_resize=None, crop_scale=(0.08, 1.0),
                          crop_ratio=(0.75, 1.33), seed=0)
loader = TorchLoader(train, batch_size=6, train=True, rank=0, world_size=1, seed=0, workers=2,
                     device=torch.device("cpu"), channels_last=False)
loader.set_epoch(0)
for i, _ in enumerate(loader):
    if i == 1:
        raise RuntimeError("failure in the middle of an epoch")
"""


@pytest.mark.slow
def test_uncaught_exception_with_workers_exits(jpeg_folder):
    """An exception nobody catches, with loader workers alive, ends the process (it used to hang at exit:
    multiprocessing SIGTERMs the workers and waits, and the workers ignored SIGTERM)."""
    result = subprocess.run([sys.executable, "-c", RAISE_WITH_WORKERS, str(jpeg_folder)], cwd=REPO,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 1 and "failure in the middle of an epoch" in result.stderr


def _default_sigint() -> None:
    # A shell's background job (`cmd &` without job control) starts with SIGINT ignored, and a child inherits
    # that; a terminal's foreground job, which this test plays, has it at its default.
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def start_in_own_group(args):
    """The trainer as the leader of a new process group, as a shell job or a torchrun rank is."""
    proc = subprocess.Popen([sys.executable, "-m", "pgt_train", *map(str, args)], cwd=REPO,
                            env={**os.environ, "OMP_NUM_THREADS": "1"}, start_new_session=True,
                            preexec_fn=_default_sigint, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert os.getpgid(proc.pid) == proc.pid != os.getpgrp()  # never signal our own group
    return proc


def wait_for(path, proc, seconds=180):
    deadline = time.time() + seconds
    while not path.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)


@pytest.mark.slow
@pytest.mark.parametrize("signum, exit_code, message", [
    (signal.SIGTERM, EXIT_PREEMPTED, "SIGTERM: saved"),  # SLURM / torchrun signal every process of the group
    (signal.SIGINT, 130, "interrupted"),  # Ctrl-C in a terminal: the whole foreground group
])
def test_signal_to_the_process_group_with_workers(jpeg_folder, tmp_path, signum, exit_code, message):
    run_dir = tmp_path / "run"
    proc = start_in_own_group(tiny(jpeg_folder, run_dir, "data.workers=2", "sched.epochs=100",
                                   "run.checkpoint_every=1"))
    wait_for(run_dir / "last.pth", proc)  # training is under way
    assert proc.poll() is None, proc.communicate()[1]
    os.killpg(proc.pid, signum)
    try:
        out, err = proc.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        pytest.fail(f"{signal.Signals(signum).name} to the process group: still running after 60 s")
    assert proc.returncode == exit_code, err
    assert message in out + err and "Traceback" not in err, err
    assert torch.load(run_dir / "last.pth", weights_only=True)["counters"]["steps_done"] >= 1


DROPPED_HANDOFF = """
import multiprocessing.resource_sharer as sharer, socket, sys, time
from pgt_train.preempt import ignore_in_worker
if sys.argv[1] == "worker":
    ignore_in_worker()
handoff = sharer.DupFd(sys.stdout.fileno())  # what a worker does for each batch's shared memory
client = socket.socket(socket.AF_UNIX)
client.connect(handoff._id[0])  # the sharer's socket, where the trainer would connect
time.sleep(0.3)  # the challenge arrives unread, so the close below resets the connection
client.close()
time.sleep(0.5)
print("served")
"""


@pytest.mark.slow
@pytest.mark.parametrize("process", ["worker", "plain"])
def test_a_handoff_the_trainer_drops_is_not_reported_by_a_worker(process):
    """Ctrl-C can reach the trainer while it fetches a batch's file descriptor from a worker; the worker's
    resource-sharer thread then loses its connection. In a loader worker that is said by the trainer's own
    line, not by a second traceback; elsewhere Python still reports it (which shows the drop really happened)."""
    result = subprocess.run([sys.executable, "-c", DROPPED_HANDOFF, process], cwd=REPO, capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 0 and "served" in result.stdout, result.stderr
    assert ("Traceback" in result.stderr) == (process == "plain"), result.stderr


def training_loader(root, workers=0):
    from pgt_train.data.folder import build_datasets
    from pgt_train.data.torch_loader import TorchLoader
    train, _ = build_datasets(str(root), num_classes=3, img_size=32, val_resize=None, crop_scale=(0.08, 1.0),
                              crop_ratio=(0.75, 1.33), seed=0)
    return train, TorchLoader(train, batch_size=6, train=True, rank=0, world_size=1, seed=0, workers=workers,
                              device=torch.device("cpu"), channels_last=False)


def test_replacement_of_an_unreadable_image_is_deterministic(folder):
    (folder / "train" / "a_round" / "train_0.jpg").write_bytes(b"broken")
    train, _ = training_loader(folder)  # the loader switches replacement on for training
    first, second = train[(0, 3)], train[(0, 3)]
    assert first.path.endswith("train_0.jpg") and first.replacement is not None
    assert torch.equal(first.replacement[0], second.replacement[0]) and first.replacement[1] == second.replacement[1]
    assert not torch.equal(train[(0, 4)].replacement[0], first.replacement[0])  # another epoch, another draw


def test_training_stops_when_nothing_is_readable(folder):
    for f in (folder / "train").rglob("*.jpg"):
        f.write_bytes(b"broken")
    _, loader = training_loader(folder)
    loader.set_epoch(0)
    with pytest.raises(UserError, match="and 32 random others too"):
        next(iter(loader))


def test_workers_leave_ctrl_c_to_the_trainer(jpeg_folder):
    """Workers are forked with SIGINT ignored (a Ctrl-C during their start-up would kill them with a
    traceback); the trainer's own Ctrl-C handling is back once they run."""
    before = signal.getsignal(signal.SIGINT)  # default_int_handler, or SIG_IGN if pytest runs as a background job
    _, loader = training_loader(jpeg_folder, workers=2)
    loader.set_epoch(0)
    batches = iter(loader)
    next(batches)
    for worker in loader.loader._iterator._workers:
        ignored = int(next(line for line in open(f"/proc/{worker.pid}/status") if line.startswith("SigIgn:")).split()[1], 16)
        assert ignored >> (signal.SIGINT - 1) & 1
    assert signal.getsignal(signal.SIGINT) is before
    del batches, loader
