"""The ablation's arms (pgt_train/ablation.py): what each trains once its overrides are resolved by the real config,
that pgt-report tells every arm apart from its settings alone, and the scripts that run them."""
import math

import pytest

from pgt_train import ablation, config
from tests.helpers import REPO, run_python

ROW = REPO / "configs" / "paper" / "table1" / "resnet18_cosine_pgt0.25.yaml"  # T1#14: α 0.25, cosine, LR 0.4


def resolved(*overrides, recipe=ROW) -> dict:
    return config.flat_settings(config.load(recipe, list(overrides)))


def test_each_arm_trains_what_it_says():
    row = resolved()
    arms = {arm.letter: resolved(*arm.overrides) for arm in ablation.arms(row)}
    assert set(arms) == {"a", "b", "c", "d"}
    lr, wd = row["optim.lr"], row["optim.weight_decay"]
    # (b): CE on α·z at LR / α and wd × α; (c): CE on α·z at the row's own; (d): plain CE at LR / α and wd × α
    expect = {"b": ("temperature", 0.25, lr / 0.25, wd * 0.25), "c": ("temperature", 0.25, lr, wd),
              "d": ("backward", None, lr / 0.25, wd * 0.25)}
    for letter, (form, alpha, arm_lr, arm_wd) in expect.items():
        s = arms[letter]
        assert (s["pgt.form"], s["pgt.alpha"]) == (form, alpha), letter
        assert math.isclose(s["optim.lr"], arm_lr, rel_tol=1e-12), letter
        assert math.isclose(s["optim.weight_decay"], arm_wd, rel_tol=1e-12), letter
        for key, power in ablation.STEP_KEYS.items():  # warmup start and floor move with the peak
            factor = 1.0 if letter == "c" else 0.25 ** power
            assert math.isclose(s[key], row[key] * factor, rel_tol=1e-12, abs_tol=1e-15), (letter, key)
    assert arms["a"] == row


def test_report_classifies_every_arm_from_its_settings():
    row = resolved()
    for arm in ablation.arms(row)[1:]:
        assert ablation.classify(row, resolved(*arm.overrides)) == arm.letter
    assert ablation.classify(row, resolved("pgt.alpha=null")) == "baseline"
    assert ablation.classify(row, resolved("pgt.alpha=null", "optim.lr=0.8")) is None  # neither LR nor LR / α
    assert ablation.classify(row, resolved("pgt.alpha=0.5", "pgt.form=temperature")) is None  # another α


def test_authors_arithmetic_has_no_twin_but_the_other_arms_run():
    row = resolved("pgt.impl=authors")
    arms = {arm.letter: arm for arm in ablation.arms(row)}
    with pytest.raises(config.ConfigError, match="impl"):
        resolved("pgt.impl=authors", *arms["b"].overrides)
    assert resolved("pgt.impl=authors", *arms["c"].overrides)["pgt.impl"] == "exact"
    assert resolved("pgt.impl=authors", *arms["d"].overrides)["pgt.alpha"] is None


@pytest.mark.slow
def test_proxy_study_dry_run_lists_the_arms(tmp_path):
    r = run_python("scripts/proxy_study.py", "--dry-run", "--ablation", "temperature", "--recipes", "resnet18_bn",
                   "resnet18_bn_pgt", "--seeds", "0", "--runs-root", str(tmp_path), "sched.epochs=2")
    assert r.returncode == 0, r.stderr
    names = [line.split(" seed ")[0] for line in r.stdout.splitlines() if ": run " in line]
    assert names == ["resnet18_bn", "resnet18_bn_pgt", "resnet18_bn_pgt-twin", "resnet18_bn_pgt-temperature",
                     "resnet18_bn_pgt-stepsize"]
    assert all("sched.epochs=2" in line for line in r.stdout.splitlines() if ": run " in line)


@pytest.mark.slow
def test_report_groups_the_arms_in_one_table(tmp_path):
    """Five hand-made run folders (the row, its three arms, the baseline; two seeds of the row): one ablation table,
    each arm named, the row's seed band and the arms' differences to (a)."""
    from tests.test_report import T1_R18, T1_R18_PGT, write_run
    from pgt_train.report.cli import main
    runs = tmp_path / "runs"
    row = resolved()
    write_run(runs / "row_s0", recipe=T1_R18_PGT, val_top1=(50.0, 60.0))
    write_run(runs / "row_s1", recipe=T1_R18_PGT, overrides=["seed=1"], val_top1=(50.0, 62.0))
    write_run(runs / "base", recipe=T1_R18, val_top1=(50.0, 58.0))
    for arm, top1 in zip(ablation.arms(row)[1:], (61.0, 57.0, 59.5)):
        write_run(runs / f"row{arm.suffix}", recipe=T1_R18_PGT, overrides=list(arm.overrides), val_top1=(50.0, top1))
    assert main([str(runs), "--out", str(tmp_path / "report")]) == 0
    md = (tmp_path / "report" / "report.md").read_text()
    section = md.split("## Ablation: temperature and step size", 1)[1].split("\n## ", 1)[0]
    table = [ln for ln in section.splitlines() if ln.startswith("| (") or ln.startswith("| baseline")]
    assert [ln.split(" | ")[1] for ln in table] == ["row", "row-twin", "row-temperature", "row-stepsize", "base"]
    assert "| 61.00 ± 1.41 |" in table[0]  # two seeds: their std
    assert "| 61.00 (one seed) | +0.000 |" in table[1] and "| -4.000 |" in table[2] and "| -3.000 |" in table[4]


def reproduce(*args):
    return run_python("scripts/reproduce.py", "--dry-run", "--runs-root", "/tmp/unused-runs", *args)


@pytest.mark.slow
def test_reproduce_puts_the_arms_beside_every_pgt_row():
    r = reproduce("--table", "1", "--ablation", "temperature", "--rows", "12,13,14,15", "data.workers=1")
    assert r.returncode == 0, r.stderr
    lines = [ln for ln in r.stdout.splitlines() if ln.startswith("[")]
    # Table 1's 14 rows, 7 of them PGT, each followed by its (b), (c), (d): 35 runs; T1#6 is the 12th
    assert lines[0].startswith("[12/35] row=6: ") and "(b) twin" in lines[1] and "(d) step size" in lines[3]
    assert lines[1].split()[-1].endswith("/paper/exact/table1/resnet50_step_pgt0.05-twin")
    assert lines[3].split()[-1].endswith("/paper/nopgt/table1/resnet50_step_pgt0.05-stepsize")
    commands = r.stdout.split("\n    ")[1:]
    assert all("data.workers=1" in c for c in commands)  # trailing overrides reach the arms
    assert "pgt.alpha=null optim.lr=8 " in commands[3]  # (d): 0.4 / 0.05


@pytest.mark.slow
def test_reproduce_without_twin_under_the_authors_arithmetic():
    r = reproduce("--table", "1", "--ablation", "temperature", "--reading", "code", "--impl", "authors",
                  "--rows", "2,3,4")
    assert r.returncode == 0, r.stderr
    left_out = [ln for ln in r.stdout.splitlines() if "left out" in ln]  # one line per PGT row of Table 1
    assert len(left_out) == 7 and all("(b) twin" in ln and "pgt.impl exact only" in ln for ln in left_out)
    assert "[2/28] row=2: " in r.stdout and "[4/28] row=2 (d) step size" in r.stdout
    assert "pgt.impl=exact" in r.stdout.split("(c) temperature alone", 1)[1].split("\n[", 1)[0]


@pytest.mark.slow
def test_reproduce_ablation_submits_one_array_with_slurm():
    r = reproduce("--table", "3", "--ablation", "temperature", "--launcher", "slurm", "--gpus", "4")
    assert r.returncode == 0, r.stderr
    assert "would submit: sbatch --parsable --array=0-22%4" in r.stdout  # 8 rows + 5 PGT rows x 3 arms
