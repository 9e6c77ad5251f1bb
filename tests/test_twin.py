"""pgt.form temperature: the derivation of the twin's settings, and that the twin takes PGT's steps.

PGT at (α, LR, wd) and cross-entropy on α·z at (LR/α, wd·α) take the same SGD steps (pgt_train/twin.py says why);
in float64 their weights stay equal to round-off, which these tests hold to 1e-9 relative. A wrong factor anywhere
(an LR of the schedule left unscaled, weight decay not scaled, a clip threshold not scaled) moves them apart by far
more: the first tests here show it does.
"""

import pytest
import torch
import torch.nn as nn
import yaml

from pgt_train import config, engine, models, optim
from pgt_train.config import twin
from pgt_train.pgt import build_pgt_loss
from pgt_train.writers import read_summary
from tests.helpers import finish, start_torchrun, tiny_run_args

ALPHA = 0.25


def tree(**sections) -> dict:
    """A resolved config as a dict tree, PGT at ALPHA in the temperature form, with `sections` merged in."""
    out = config.to_dict(config.Config())
    out["pgt"].update(alpha=ALPHA, form="temperature")
    out["pgt"].setdefault("twin_of", {name: None for name, _ in twin.SCALED.values()})
    for section, values in sections.items():
        out[section].update(values)
    return out


def test_derive_scales_every_lr_by_one_over_alpha_and_the_rest_by_alpha():
    pgt = tree(optim={"lr": 0.1, "weight_decay": 5e-4}, sched={"warmup_lr": 1e-3, "min_lr": 1e-5},
               clip={"mode": "agc", "value": 0.04})
    out = twin.derive(pgt)
    assert out["optim"]["lr"] == 0.1 / ALPHA and out["sched"]["warmup_lr"] == 1e-3 / ALPHA
    assert out["sched"]["min_lr"] == 1e-5 / ALPHA
    assert out["optim"]["weight_decay"] == 5e-4 * ALPHA and out["clip"]["value"] == 0.04 * ALPHA
    assert out["pgt"]["twin_of"] == {"lr": 0.1, "warmup_lr": 1e-3, "min_lr": 1e-5, "weight_decay": 5e-4,
                                     "clip_value": 0.04}
    assert pgt["optim"]["lr"] == 0.1, "derive must not change its argument"
    def rest(t):
        return {k: v for k, v in config.flatten(t).items() if k not in twin.SCALED and not k.startswith("pgt.twin_of")}
    assert rest(out) == rest(pgt)


def test_derive_is_idempotent_through_the_saved_yaml():
    """A run folder's config.yaml read back as a recipe (or by a resume) is checked, not scaled twice."""
    once = twin.derive(tree(optim={"lr": 0.3}, sched={"warmup_lr": 4e-4}))  # 0.3 / 0.25 is not exact in binary
    saved = yaml.safe_load(yaml.safe_dump(once, sort_keys=False))
    assert twin.derive(saved) == once and twin.derive(once) == once


def test_backward_form_is_left_alone():
    pgt = tree()
    pgt["pgt"]["form"] = "backward"
    assert twin.derive(pgt) == pgt


@pytest.mark.parametrize("change, match", [
    (lambda t: t["optim"].update(lr=0.2), r"optim.lr: 0.2 is not the twin of pgt.twin_of.lr \(0.4 / pgt.alpha 0.25"),
    (lambda t: t["pgt"].update(alpha=0.5), r"optim.lr: 1.6 is not the twin of pgt.twin_of.lr"),
    (lambda t: t["pgt"].update(form="backward"), r"pgt.twin_of: holds the PGT-side values .* pgt.form is backward"),
])
def test_a_derived_config_changed_by_hand_is_refused(change, match):
    derived = twin.derive(tree(optim={"lr": 0.4}))
    change(derived)
    with pytest.raises(config.ConfigError, match=match):
        twin.derive(derived)


def test_an_override_with_its_twin_of_cleared_is_derived_again():
    derived = twin.derive(tree(optim={"lr": 0.4}))
    derived["optim"]["lr"], derived["pgt"]["twin_of"]["lr"] = 0.2, None
    again = twin.derive(derived)
    assert again["optim"]["lr"] == 0.2 / ALPHA and again["pgt"]["twin_of"]["lr"] == 0.2


@pytest.mark.parametrize("clip, match", [
    ({"mode": "agc", "value": 0.002}, "clip.value: AGC's factor × pgt.alpha is 0.0005 in the twin, below 0.001"),
])
def test_clipping_without_an_exact_twin_is_refused(clip, match):
    with pytest.raises(config.ConfigError, match=match):
        twin.derive(tree(clip=clip))


def test_every_lr_like_key_is_scaled():
    """A float key of optim or sched whose name holds "lr" that SCALED leaves out would train the twin at PGT's LR
    for part of the schedule: add it to twin.SCALED (and a pgt.twin_of field)."""
    lr_keys = {key.name for key in config.keys(config.Config) if key.name.split(".")[0] in ("optim", "sched")
               and "lr" in key.name.split(".")[-1] and config.number_type(key.type) is float}
    assert lr_keys >= {"optim.lr", "sched.warmup_lr", "sched.min_lr"}
    assert lr_keys <= set(twin.SCALED), f"not scaled by the twin: {sorted(lr_keys - set(twin.SCALED))}"


# ---------------------------------------------------------------- the identity, in-process, on real components


def bn_net(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    net = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.Conv2d(8, 8, 3, stride=2),
                        nn.BatchNorm2d(8), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 5))
    return net.double()


def train(settings: dict, *, steps: int = 24, steps_per_epoch: int = 6, accum: int = 2,
          twin_clipping: bool = True) -> nn.Module:
    """SGD Nesterov with timm's groups (no decay on norms and biases), warmup then cosine, accumulation,
    `settings`' clipping and loss: the trainer's own parts, on a tiny BN network in float64. twin_clipping=False
    clips a twin's gradient as any other (plain torch clipping, the gradient scale ignored)."""
    model, o, s, c, p = bn_net(), settings["optim"], settings["sched"], settings["clip"], settings["pgt"]
    opt = optim.build_optimizer(model, lr=o["lr"], momentum=0.9, nesterov=True, weight_decay=o["weight_decay"],
                                decay_norm_and_bias=False)
    sched = optim.build_scheduler(opt, name="cosine", epochs=4, warmup_epochs=1, warmup_lr=s["warmup_lr"],
                                  milestones=(), gamma=0.1, min_lr=s["min_lr"], steps_per_epoch=steps_per_epoch)
    loss_fn = build_pgt_loss(p["alpha"], label_smoothing=0.1, form=p["form"])
    clip_params = engine.clip_parameters(model, c["mode"])
    g = torch.Generator().manual_seed(1)
    for step in range(steps):
        for _ in range(accum):
            x, y = torch.randn(8, 3, 12, 12, generator=g, dtype=torch.float64), torch.randint(0, 5, (8,), generator=g)
            (loss_fn(model(x), y) / accum).backward()
        if c["mode"] != "none":
            twin_scale = p["alpha"] if p["form"] == "temperature" and twin_clipping else 1.0
            engine.clip_gradients(clip_params, mode=c["mode"], value=c["value"], gradient_scale=twin_scale)
        opt.step()
        opt.zero_grad(set_to_none=True)
        sched.step_update(step + 1)
    return model


def max_rel_diff(a: nn.Module, b: nn.Module) -> float:
    sa, sb = a.state_dict(), b.state_dict()
    return max(((sa[k] - sb[k]).norm() / sa[k].norm().clamp_min(1e-300)).item()
               for k in sa if sa[k].is_floating_point())


RECIPE = dict(optim={"lr": 0.2, "weight_decay": 5e-3}, sched={"warmup_lr": 0.01, "min_lr": 0.002})


@pytest.mark.parametrize("clip", [{"mode": "none", "value": 1.0}, {"mode": "agc", "value": 0.02},
                                  {"mode": "value", "value": 0.01}, {"mode": "norm", "value": 0.05}])
def test_twin_takes_pgt_steps_in_float64(clip):
    pgt = tree(clip=clip, **RECIPE)
    pgt["pgt"]["form"] = "backward"
    twin_run = twin.derive(tree(clip=clip, **RECIPE))
    diff = max_rel_diff(train(pgt), train(twin_run))
    assert diff < 1e-9, f"twin and PGT apart by {diff:.3g} relative"


@pytest.mark.parametrize("key", sorted(twin.SCALED))
def test_a_key_left_unscaled_moves_the_twin_far_away(key):
    """The identity test can fail: undo the scaling of any one key and the weights part by far more than 1e-9."""
    clip = {"mode": "value", "value": 0.01}
    pgt = tree(clip=clip, **RECIPE)
    pgt["pgt"]["form"] = "backward"
    wrong = twin.derive(tree(clip=clip, **RECIPE))
    section, leaf = key.split(".")
    wrong[section][leaf] = pgt[section][leaf]
    assert max_rel_diff(train(pgt), train(wrong)) > 1e-6


def test_torchs_norm_clipping_alone_would_not_be_exact():
    """Why engine.clip_gradients divides the twin's gradient by α before norm clipping: with the threshold scaled by
    α alone the clipped steps differ, by torch's 1e-6 added to the norm, far above float64 round-off."""
    clip = {"mode": "norm", "value": 0.05}
    pgt, twin_run = tree(clip=clip, **RECIPE), twin.derive(tree(clip=clip, **RECIPE))
    pgt["pgt"]["form"] = "backward"
    assert max_rel_diff(train(pgt), train(twin_run, twin_clipping=False)) > 1e-7


# ---------------------------------------------------------------- through pgt-train


def recipe_args(run_dir, *extra) -> list[str]:
    """A PGT recipe with everything the identity must survive: BN, warmup then cosine, Nesterov, weight decay off
    norms and biases, label smoothing 0.1, 2 accumulation steps, AGC; float64 on the CPU, 3 epochs of 4 steps."""
    return tiny_run_args(run_dir, "model.dtype=float64", "amp.dtype=none", "run.device=cpu", "sched.name=cosine",
                         "sched.warmup_lr=0.005", "sched.min_lr=0.001", "optim.nesterov=true",
                         "optim.weight_decay=5e-3", "optim.decay_norm_and_bias=false", "loss.label_smoothing=0.1",
                         "data.accum_steps=2", "clip.mode=agc", "clip.value=0.05", *extra, classes=4, img_size=16,
                         batch=16, train_size=64, val_size=16, epochs=3, warmup=1, lr=0.1, alpha=ALPHA)


def twin_args(run_dir, *extra) -> list[str]:
    return recipe_args(run_dir, "pgt.form=temperature", *extra)


@pytest.fixture(scope="module")
def cli_runs(tmp_path_factory):
    """PGT and its twin, in one process each and under 2 gloo ranks each, all four at once (one thread each)."""
    tmp = tmp_path_factory.mktemp("twin")
    procs = {"pgt": start_torchrun(1, recipe_args(tmp / "pgt")), "twin": start_torchrun(1, twin_args(tmp / "twin")),
             "pgt_ddp": start_torchrun(2, recipe_args(tmp / "pgt_ddp")),
             "twin_ddp": start_torchrun(2, twin_args(tmp / "twin_ddp"))}
    for name, proc in procs.items():
        result = finish(proc, timeout=600)
        assert result.returncode == 0, f"{name}:\n{result.stdout}\n{result.stderr}"
    return tmp


def saved_weights(run_dir) -> dict:
    return torch.load(run_dir / "last.pth", map_location="cpu", weights_only=True)["model"]


def assert_same_weights(a_dir, b_dir) -> None:
    a, b = saved_weights(a_dir), saved_weights(b_dir)
    floats = [k for k in a if a[k].is_floating_point()]
    assert all(a[k].dtype == torch.float64 for k in floats), "model.dtype float64 did not train in float64"
    rel = {k: ((a[k] - b[k]).norm() / a[k].norm().clamp_min(1e-300)).item() for k in floats}
    worst = max(rel, key=rel.get)
    assert rel[worst] <= 1e-9, f"{worst}: PGT and its twin apart by {rel[worst]:.3g} relative"
    torch.manual_seed(0)  # the trainer's seed before it builds the model: these are the weights both started from
    w0 = models.build_model("resnet18", num_classes=4, norm="bn").state_dict()
    moved = min(((a[k] - w0[k]).norm() / w0[k].norm()).item() for k in ("conv1.weight", "fc.weight"))
    assert moved > 1e-3, f"training barely moved the weights ({moved:.3g}): their equality would show nothing"
    summary_a, summary_b = read_summary(a_dir / "summary.csv"), read_summary(b_dir / "summary.csv")
    for ra, rb in zip(summary_a, summary_b, strict=True):
        assert float(ra["val_loss"]) == pytest.approx(float(rb["val_loss"]), rel=1e-9)  # both measure CE on z
        assert float(rb["lr"]) == pytest.approx(float(ra["lr"]) / ALPHA, rel=1e-5)  # summary.csv keeps 6 digits


@pytest.mark.slow
def test_twin_through_pgt_train_ends_at_pgt_weights(cli_runs):
    assert_same_weights(cli_runs / "pgt", cli_runs / "twin")


@pytest.mark.slow
def test_twin_under_two_gloo_ranks_ends_at_pgt_weights(cli_runs):
    assert_same_weights(cli_runs / "pgt_ddp", cli_runs / "twin_ddp")


@pytest.mark.slow
def test_twin_run_folder_reloads_and_resumes_without_scaling_twice(cli_runs, capsys):
    """config.yaml holds the twin's values and pgt.twin_of the PGT ones; read back as a recipe, or by a resume
    that compares it with the resolved config, nothing is scaled again."""
    from pgt_train import cli
    saved = yaml.safe_load((cli_runs / "twin" / "config.yaml").read_text())
    assert saved["optim"]["lr"] == 0.1 / ALPHA and saved["pgt"]["twin_of"]["lr"] == 0.1
    assert saved["optim"]["weight_decay"] == 5e-3 * ALPHA and saved["clip"]["value"] == 0.05 * ALPHA
    assert cli.main(["--config", str(cli_runs / "twin" / "config.yaml"), "--print-config"]) == 0
    assert yaml.safe_load(capsys.readouterr().out) == saved
    for args in (twin_args(cli_runs / "twin", "--resume", "auto"),
                 ["--config", str(cli_runs / "twin" / "config.yaml"), "--resume", "auto"]):
        assert cli.main(args) == 0
        assert "is finished" in capsys.readouterr().out
    assert cli.main(recipe_args(cli_runs / "twin", "--resume", "auto")) == 2  # PGT itself is another run
    assert "pgt.form" in capsys.readouterr().err


@pytest.mark.slow
def test_norm_clipping_twin_through_pgt_train(tmp_path):
    """clip.mode norm (Table 2's gradient-clipping rows): the trainer hands α to the clipping, so the twin ends at
    PGT's weights; a trainer that clipped the twin's gradient as any other would leave them ~1e-5 apart
    (test_torchs_norm_clipping_alone_would_not_be_exact). A threshold of 0.01 clips every step."""
    extra = ("clip.mode=norm", "clip.value=0.01")
    procs = [start_torchrun(1, recipe_args(tmp_path / "pgt", *extra)),
             start_torchrun(1, twin_args(tmp_path / "twin", *extra))]
    for proc in procs:
        result = finish(proc, timeout=600)
        assert result.returncode == 0, result.stdout + result.stderr
    assert_same_weights(tmp_path / "pgt", tmp_path / "twin")


@pytest.mark.parametrize("extra, message", [
    (("pgt.impl=authors",), "pgt.form: temperature is defined for pgt.impl exact only"),
    (("data.loader=dali", "data.root=/nonexistent"), "model.dtype: float64 needs a loader that hands float64 images"),
])
def test_refusals_are_one_line_exit_2_before_anything_is_written(tmp_path, capsys, extra, message):
    from pgt_train import cli
    assert cli.main(twin_args(tmp_path / "run", *extra)) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0], err
    assert not (tmp_path / "run").exists()


def test_print_config_shows_the_scaled_values(capsys):
    from pgt_train import cli
    assert cli.main([*twin_args(None), "--print-config"]) == 0
    shown = yaml.safe_load(capsys.readouterr().out)
    assert shown["optim"]["lr"] == 0.1 / ALPHA and shown["sched"]["warmup_lr"] == 0.005 / ALPHA
    assert shown["sched"]["min_lr"] == 0.001 / ALPHA and shown["optim"]["weight_decay"] == 5e-3 * ALPHA
    assert shown["pgt"]["twin_of"] == {"lr": 0.1, "warmup_lr": 0.005, "min_lr": 0.001, "weight_decay": 5e-3,
                                       "clip_value": 0.05}
