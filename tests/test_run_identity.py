"""What makes a run (config.defining_settings) and resume refusing to change it, with real CLI runs."""
import pytest

from pgt_train import checkpoint, config
from pgt_train.checkpoint import CheckpointError
from tests.helpers import run_cli, tiny_run_args

TINY = tiny_run_args(None, "diag.interval=0", model="resnet10t")


def cfg(*overrides):
    return config.load(None, ["data.loader=synthetic", *overrides])


@pytest.mark.parametrize("override", ["seed=1", "amp.dtype=bf16", "pgt.impl=official", "optim.lr=0.2",
                                      "data.img_size=160", "model.num_classes=10", "data.crop_scale=[0.35,1]",
                                      "data.demo.seed=3", "sched.epochs=90", "model.sync_bn=true",
                                      "sched.update=epoch", "model.zero_init_last=false"])
def test_what_changes_the_experiment_is_defining(override):
    key = override.split("=")[0]
    diffs = config.diff_defining(cfg("pgt.alpha=0.3"), cfg("pgt.alpha=0.3", override))
    assert [d[0] for d in diffs] == [key]


@pytest.mark.parametrize("override", ["run.dir=elsewhere", "run.compile=true", "run.log_interval=7", "diag.interval=0",
                                      "data.workers=0", "data.accum_steps=4", "data.root=/mnt/imagenet",
                                      "model.channels_last=true", "data.dali_device=cpu", "data.skip_corrupt=false"])
def test_where_and_how_it_runs_is_not_defining(override):
    assert config.diff_defining(cfg(), cfg(override)) == []


def test_reader_and_impl_without_pgt_do_not_define_the_run():
    torchvision = config.load(None, ["data.root=/d", "data.loader=torchvision"])
    assert config.diff_defining(torchvision, config.load(None, ["data.root=/d", "data.loader=dali"])) == []
    assert [d[0] for d in config.diff_defining(torchvision, cfg())] == ["data.loader"]  # synthetic images do
    assert config.diff_defining(cfg("pgt.impl=official"), cfg()) == []  # PGT off: plain cross-entropy either way


def test_older_config_lacking_keys_counts_as_defaults():
    saved = {"seed": 0, "model": {"name": "resnet50"}, "data": {"loader": "synthetic"}}
    assert config.diff_defining(saved, cfg()) == []
    assert config.diff_defining({**saved, "gone_key": 1, "pgt": {"alpha": 0.3}}, cfg("pgt.alpha=0.3")) == []


def test_every_differing_key_in_one_line_and_longer_schedule_points_to_init_from():
    saved = config.to_dict(cfg("pgt.alpha=0.3"))
    with pytest.raises(CheckpointError) as e:
        checkpoint.check_compatible(saved, config.to_dict(cfg("pgt.alpha=0.9", "sched.epochs=200")), source="r/last.pth")
    message = str(e.value)
    assert "\n" not in message
    assert "pgt.alpha=0.3 but the config has 0.9" in message and "sched.epochs=100 but the config has 200" in message
    assert "--init-from r/last.pth" in message


def snapshot(folder):
    return {p.relative_to(folder): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.mark.slow
def test_resume_refuses_changed_settings_and_writes_nothing(tmp_path):
    run_dir = tmp_path / "run"
    first = run_cli(*TINY, f"run.dir={run_dir}", "--run-epochs", "1")
    assert first.returncode == 0, first.stderr
    before = snapshot(run_dir)
    assert {"config.yaml", "summary.csv", "last.pth"} <= {p.name for p in before}
    changed = run_cli(*TINY, f"run.dir={run_dir}", "pgt.alpha=0.9", "loss.label_smoothing=0.2", "clip.mode=agc",
                      "--resume", "auto")
    assert changed.returncode == 2
    err = changed.stderr.strip()
    assert err.count("\n") == 0 and "Traceback" not in err
    for part in ("pgt.alpha=0.3 but the config has 0.9", "loss.label_smoothing=0.0 but the config has 0.2",
                 "clip.mode='none' but the config has 'agc'"):
        assert part in err
    assert snapshot(run_dir) == before  # config.yaml, summary.csv, last.pth, TensorBoard files: byte for byte
    same_run = run_cli(*TINY, f"run.dir={run_dir}", "data.workers=1", "run.log_interval=3", "--resume", "auto")
    assert same_run.returncode == 0, same_run.stderr
    assert (run_dir / "summary.csv").read_text().count("\n") == 3  # header and epochs 1, 2
