"""pgt-train export: distinct names for weights and config, no overwriting, no non-finite weights."""
import pytest
import torch
from safetensors.torch import load_file

from pgt_train import checkpoint
from pgt_train.errors import UserError
from pgt_train.export import export
from tests.helpers import run_cli


@pytest.fixture
def run_dir(tmp_path):
    """A run folder as the trainer leaves it: checkpoints, config, summary (small stand-in weights)."""
    run = tmp_path / "run"
    run.mkdir()
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4))
    state = {"model": model.state_dict(), "counters": {"epochs_done": 3},
             "config": {"model": {"name": "resnet18", "num_classes": 4, "norm": "batchnorm"}}}
    for name in ("last.pth", "best.pth"):
        checkpoint.save(run / name, state)
    (run / "config.yaml").write_text("model: {name: resnet18}\n")
    (run / "summary.csv").write_text("epoch,val_top1\n1,50.0\n")
    return run


def snapshot(folder):
    return {p.name: p.read_bytes() for p in folder.iterdir()}


def test_weights_and_config_get_distinct_names(run_dir, tmp_path):
    weights, config, _ = export(run_dir, tmp_path / "out" / "model.safetensors")
    assert (weights.name, config.name) == ("model.safetensors", "model.yaml")
    saved = torch.load(run_dir / "best.pth", weights_only=True)["model"]
    assert all(torch.equal(load_file(weights)[k], v) for k, v in saved.items())
    assert "resnet18" in config.read_text()


@pytest.mark.parametrize("out", ["model.yaml", "model.pth", "model"])
def test_out_must_end_in_safetensors(run_dir, tmp_path, out):
    with pytest.raises(UserError, match="must end in .safetensors"):
        export(run_dir, tmp_path / out)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]


def test_existing_files_are_kept_unless_force(run_dir, tmp_path):
    for existing in ("model.safetensors", "model.yaml"):
        (tmp_path / existing).write_bytes(b"mine")
        with pytest.raises(UserError, match="--force"):
            export(run_dir, tmp_path / "model.safetensors")
        assert (tmp_path / existing).read_bytes() == b"mine"
    weights, _, _ = export(run_dir, tmp_path / "model.safetensors", force=True)
    assert set(load_file(weights)) == set(torch.load(run_dir / "best.pth", weights_only=True)["model"])


def test_run_files_are_never_written_even_with_force(run_dir):
    before = snapshot(run_dir)
    with pytest.raises(UserError, match="the run's own config.yaml"):
        export(run_dir, run_dir / "config.safetensors", force=True)
    assert snapshot(run_dir) == before
    export(run_dir, run_dir / "model.safetensors")  # beside them is fine
    assert snapshot(run_dir).items() >= before.items()


@pytest.mark.parametrize("tensor", ["1.running_var", "0.weight"])
def test_non_finite_checkpoint_is_refused(run_dir, tmp_path, tensor):
    """A buffer counts as much as a parameter: an inf BatchNorm running_var makes eval output NaN."""
    state = torch.load(run_dir / "best.pth", weights_only=True)
    state["model"][tensor][0] = float("inf")
    checkpoint.save(run_dir / "best.pth", state)
    with pytest.raises(UserError, match=f"non-finite values in 1 tensors \\(e.g. {tensor}\\)"):
        export(run_dir, tmp_path / "model.safetensors")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]


@pytest.mark.slow
@pytest.mark.parametrize("out, message", [("last.pth", "must end in .safetensors"),
                                          ("config.safetensors", "the run's own config.yaml")])
def test_cli_export_onto_the_run_exits_2_and_keeps_it(run_dir, out, message):
    before = snapshot(run_dir)
    result = run_cli("export", run_dir, "--out", run_dir / out, "--force")
    assert result.returncode == 2 and message in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert snapshot(run_dir) == before
