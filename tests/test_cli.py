"""The trainer end to end, as a user runs it: real JPEGs, real subprocesses, outputs read back."""
import pytest
import torch
import yaml
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from pgt_train import config
from pgt_train.writers import SUMMARY_COLUMNS, TIMING_COLUMNS, read_summary
from tests.helpers import run_cli, tiny_run_args

pytestmark = pytest.mark.slow  # every test here runs pgt-train in a subprocess


def tiny_run(root, run_dir, *extra):
    """Two epochs on the 3-class JPEG folder (real decoding), α 0.3."""
    return tiny_run_args(run_dir, *extra, root=root, classes=3, batch=6, img_size=32, lr=0.05)


@pytest.fixture(scope="module")
def two_epoch_run(jpeg_folder, tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("run") / "straight"
    result = run_cli(*tiny_run(jpeg_folder, run_dir))
    assert result.returncode == 0, result.stderr
    return run_dir, result


def test_outputs_of_a_run(two_epoch_run, jpeg_folder):
    run_dir, result = two_epoch_run
    rows = read_summary(run_dir / "summary.csv")
    assert [int(r["epoch"]) for r in rows] == [1, 2]
    assert set(SUMMARY_COLUMNS) <= set(rows[0])
    assert all(int(r["val_images"]) == 9 for r in rows)  # 3 classes x 3 val JPEGs, each counted once
    assert all(0 <= float(r["val_top1"]) <= 100 and float(r["train_img_per_s"]) > 0 for r in rows)
    # The saved config is the resolved one, and it loads back to an equal Config.
    saved = config.from_dict(yaml.safe_load((run_dir / "config.yaml").read_text()))
    assert saved.pgt.alpha == 0.3 and saved.data.root == str(jpeg_folder)
    # TensorBoard event files hold one point per epoch for the curves.
    events = EventAccumulator(str(run_dir / "tb"))
    events.Reload()
    assert [e.step for e in events.Scalars("val/top1")] == [1, 2]
    assert [round(e.value, 3) for e in events.Scalars("val/top1")] == [round(float(r["val_top1"]), 3) for r in rows]
    # Checkpoints are plain tensors and builtins: they load with weights_only=True.
    for name in ("last.pth", "best.pth"):
        state = torch.load(run_dir / name, map_location="cpu", weights_only=True)
        assert state["config"]["model"]["name"] == "resnet18"
    assert torch.load(run_dir / "last.pth", weights_only=True)["counters"]["epochs_done"] == 2
    assert "val top-1" in result.stdout and "results" in result.stdout


def test_resume_is_bit_exact(two_epoch_run, jpeg_folder, tmp_path):
    straight_dir, _ = two_epoch_run
    run_dir = tmp_path / "resumed"
    first = run_cli(*tiny_run(jpeg_folder, run_dir), "--run-epochs", "1")
    assert first.returncode == 0, first.stderr
    assert len(read_summary(run_dir / "summary.csv")) == 1
    second = run_cli(*tiny_run(jpeg_folder, run_dir), "--resume", "auto")
    assert second.returncode == 0, second.stderr
    a = torch.load(straight_dir / "last.pth", weights_only=True)["model"]
    b = torch.load(run_dir / "last.pth", weights_only=True)["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)
    rows_a = read_summary(straight_dir / "summary.csv")
    rows_b = read_summary(run_dir / "summary.csv")
    skip = set(TIMING_COLUMNS)
    assert [{k: v for k, v in r.items() if k not in skip} for r in rows_a] == \
           [{k: v for k, v in r.items() if k not in skip} for r in rows_b]


def test_misspelled_key_exits_2_with_one_line_and_writes_nothing(jpeg_folder, tmp_path):
    run_dir = tmp_path / "never"
    result = run_cli(*tiny_run(jpeg_folder, run_dir), "optim.lrr=0.1")
    assert result.returncode == 2
    assert result.stderr.strip().count("\n") == 0
    assert "unknown key 'optim.lrr' (did you mean 'optim.lr'?)" in result.stderr
    assert "Traceback" not in result.stderr
    assert not run_dir.exists()


@pytest.mark.parametrize("extra, message", [
    (["model.num_classes=4"], "model.num_classes is 4 but"),
    (["data.root=/nonexistent/imagenet"], "folder not found: /nonexistent/imagenet"),
    (["--resume", "/nonexistent/last.pth"], "checkpoint not found"),
])
def test_bad_input_is_one_line(jpeg_folder, tmp_path, extra, message):
    result = run_cli(*tiny_run(jpeg_folder, tmp_path / "run"), *extra)
    assert result.returncode == 2
    assert message in result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / "run").exists()


def test_print_config_prints_resolved_yaml(jpeg_folder, tmp_path):
    result = run_cli(*tiny_run(jpeg_folder, tmp_path / "run"), "--print-config")
    assert result.returncode == 0
    printed = yaml.safe_load(result.stdout)
    assert printed["pgt"]["alpha"] == 0.3 and printed["data"]["batch_size"] == 6
    assert not (tmp_path / "run").exists()


def test_compiled_training_with_pgt_saves_plain_keys(tmp_path):
    run_dir = tmp_path / "compiled"
    result = run_cli(*tiny_run_args(run_dir, "run.compile=true", classes=10, batch=16, train_size=64, val_size=32,
                                    img_size=32, epochs=1, warmup=0, lr=None))
    assert result.returncode == 0, result.stderr
    keys = torch.load(run_dir / "last.pth", weights_only=True)["model"].keys()
    assert "conv1.weight" in keys and not any(k.startswith(("_orig_mod.", "module.")) for k in keys)


def test_a_decoder_that_does_not_import_exits_2_before_anything_is_written(jpeg_folder, tmp_path, monkeypatch, capsys):
    """data.decoder names a backend whose package is missing (here: torchcodec's loader made to fail as it does
    without the extra): one line naming the key, exit 2, no run folder."""
    from pgt_train import cli
    from pgt_train.data import decoders

    def missing():
        raise ImportError("No module named 'torchcodec'")
    monkeypatch.setitem(decoders.BACKENDS, "torchcodec", missing)
    run_dir = tmp_path / "run"
    assert cli.main(tiny_run(jpeg_folder, run_dir) + ["data.loader=nvjpeg", "data.decoder=torchcodec"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("pgt-train: error: data.decoder: JPEG decoder 'torchcodec' does not import here") and \
        err.count("\n") == 1, err
    assert not run_dir.exists()
