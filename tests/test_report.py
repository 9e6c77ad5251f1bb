"""pgt-report end to end: real tiny runs through the CLI, plus hand-made run folders for what a CPU cannot train
(a paper row's setup) and for exact numbers (seed statistics)."""
import csv
import os
import statistics
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from pgt_train import config
from pgt_train.report import main
from pgt_train.writers import SUMMARY_COLUMNS
from tests.conftest import REPO

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
TINY = ["--config", "/dev/null", "data.loader=synthetic", "model.name=resnet18", "model.num_classes=4",
        "model.norm=none", "data.img_size=16", "data.workers=0", "data.batch_size=8", "data.train_size=32",
        "data.val_size=16", "sched.epochs=2", "sched.warmup_epochs=1", "optim.lr=0.02", "run.progress=false",
        "diag.interval=2"]


def python(*args, timeout=180) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}  # two runs side by side on two cores
    return subprocess.run([sys.executable, "-m", *map(str, args)], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=timeout)


@pytest.fixture(scope="module")
def tiny_runs(tmp_path_factory):
    """A baseline and a PGT run (α 0.3) with every other setting equal, trained at the same time."""
    root = tmp_path_factory.mktemp("runs")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    procs = {name: subprocess.Popen([sys.executable, "-m", "pgt_train", *TINY, f"pgt.alpha={alpha}",
                                     f"run.dir={root / name}"], cwd=REPO, env=env, stdout=subprocess.PIPE,
                                    stderr=subprocess.PIPE, text=True)
             for name, alpha in (("base", "null"), ("pgt", 0.3))}
    for name, proc in procs.items():
        _, err = proc.communicate(timeout=180)
        assert proc.returncode == 0, f"{name}: {err}"
    return root


@pytest.fixture(scope="module")
def report(tiny_runs, tmp_path_factory):
    out = tmp_path_factory.mktemp("report")
    result = python("pgt_train.report", tiny_runs, "--out", out)  # the parent folder: expanded to both runs
    assert result.returncode == 0, result.stderr
    return out


def read_csv(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def final(run_dir, column):
    return float(read_csv(run_dir / "summary.csv")[-1][column])


def test_report_of_real_runs(tiny_runs, report):
    md = (report / "report.md").read_text()
    rows = {r["group"]: r for r in read_csv(report / "report.csv")}
    assert set(rows) == {"base", "pgt"}
    assert "| base |" in md and "| pgt |" in md
    # The PGT run's difference to its baseline, from the two runs' own final epochs.
    pgt = rows["pgt"]
    assert pgt["baseline"] == "base" and rows["base"]["baseline"] == ""
    expected = final(tiny_runs / "pgt", "val_top1") - final(tiny_runs / "base", "val_top1")
    assert float(pgt["test_diff"]) == pytest.approx(expected)
    pgt_line = next(line for line in md.splitlines() if line.startswith("| pgt |"))
    assert f"{expected:+.2f}" in pgt_line
    assert pgt["alpha"] == "0.3" and rows["base"]["alpha"] == "" and pgt["seeds"] == "1"


def test_report_figures_are_valid_pngs(report):
    md = (report / "report.md").read_text()
    pngs = sorted(report.glob("*.png"))
    names = {p.name for p in pngs}
    assert {"curves.png", "loss_logit_vs_alpha.png", "accuracy_vs_alpha.png", "transform_effect.png",
            "zeroed_filters.png"} <= names
    assert any(n.startswith("filter_norms_pgt_") for n in names)
    for png in pngs:
        assert png.read_bytes()[:8] == PNG_SIGNATURE, png.name
        with Image.open(png) as image:
            image.verify()
        with Image.open(png) as image:
            assert image.width >= 300 and image.height >= 200, png.name
            assert len(np.unique(np.asarray(image.convert("L")))) > 10, f"{png.name} looks blank"
        assert f"]({png.name})" in md  # embedded, with its caption
    assert "skipped" not in md


def write_run(folder, *, overrides=(), train_top1=(40.0, 60.0), val_top1=(38.0, 55.0)):
    """A hand-made run folder: config.yaml as pgt-train writes it, summary.csv with the given per-epoch top-1."""
    cfg = config.load(None, ["data.loader=synthetic", f"run.dir={folder}", *overrides])
    folder.mkdir(parents=True)
    (folder / "config.yaml").write_text(config.to_yaml(cfg))
    with open(folder / "summary.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=SUMMARY_COLUMNS)
        writer.writeheader()
        for epoch, (train, val) in enumerate(zip(train_top1, val_top1), start=1):
            writer.writerow({"epoch": epoch, "lr": 0.1, "train_top1": train, "val_top1": val, "val_loss": 1.0,
                             "logit_norm": 5.0})
    return folder


def test_paper_row_beside_a_matching_run(tmp_path, capsys):
    write_run(tmp_path / "runs" / "r50_pgt", overrides=["model.name=resnet50", "sched.name=cosine", "pgt.alpha=0.05",
                                                        "data.batch_size=256"])
    out = tmp_path / "report"
    assert main([str(tmp_path / "runs"), "--out", str(out)]) == 0
    line = next(l for l in (out / "report.md").read_text().splitlines() if l.startswith("| r50_pgt |"))
    assert "| 2/100 |" in line  # trained / scheduled epochs
    assert "| T1#4* | 79.68 | 77.216 | -19.68 | -22.22 |" in line  # ours 60 / 55 after 2 epochs
    assert "batch 256 vs 1024" in (out / "report.md").read_text()  # flagged: not the paper's setup
    (row,) = read_csv(out / "report.csv")
    assert (row["paper_row"], float(row["paper_train"]), float(row["paper_test"])) == ("T1#4", 79.68, 77.216)
    # The same run is Table 3's row 7 when that table is asked for.
    assert main([str(tmp_path / "runs"), "--out", str(out), "--table", "3"]) == 0
    assert "| T3#7* | 79.68 | 77.216 |" in (out / "report.md").read_text()
    assert "Table 3 (ResNet-50 ablation)" in (out / "report.md").read_text()
    assert main([str(tmp_path / "runs"), "--out", str(out), "--table", "2"]) == 2
    assert "no run matches a row of the paper's Table 2" in capsys.readouterr().err


def test_table2_method_from_clipping(tmp_path):
    nobn = ["model.name=resnet18", "model.norm=none", "data.batch_size=256", "pgt.alpha=0.25"]
    write_run(tmp_path / "agc_pgt", overrides=[*nobn, "clip.mode=agc", "clip.value=0.08"])
    write_run(tmp_path / "gc_pgt", overrides=[*nobn, "clip.mode=norm"])
    assert main([str(tmp_path / "agc_pgt"), str(tmp_path / "gc_pgt"), "--out", str(tmp_path / "r")]) == 0
    rows = {r["group"]: r for r in read_csv(tmp_path / "r" / "report.csv")}
    assert (rows["agc_pgt"]["paper_row"], rows["agc_pgt"]["paper_test"]) == ("T2#10", "68.856")
    assert (rows["gc_pgt"]["paper_row"], rows["gc_pgt"]["paper_test"]) == ("T2#9", "67.088")


def test_seeds_form_one_group(tmp_path):
    finals = {0: 50.0, 1: 53.0, 2: 58.5}
    for seed, val in finals.items():
        write_run(tmp_path / "sweep" / f"pgt_seed{seed}", overrides=[f"seed={seed}", "pgt.alpha=0.3"],
                  train_top1=(30.0, val + 5), val_top1=(20.0, val))
    write_run(tmp_path / "sweep" / "other_lr", overrides=["pgt.alpha=0.3", "optim.lr=0.2"])  # not a seed: apart
    out = tmp_path / "report"
    assert main([str(tmp_path / "sweep"), "--out", str(out)]) == 0
    rows = {r["group"]: r for r in read_csv(out / "report.csv")}
    assert set(rows) == {"pgt", "other_lr"}
    group = rows["pgt"]
    mean, std = statistics.fmean(finals.values()), statistics.stdev(finals.values())
    assert (group["seeds"], group["seed_list"]) == ("3", "0;1;2")
    assert float(group["test_top1"]) == pytest.approx(mean) and float(group["test_top1_std"]) == pytest.approx(std)
    assert float(group["gap"]) == pytest.approx(5.0) and float(group["gap_std"]) == pytest.approx(0.0)
    assert rows["other_lr"]["seeds"] == "1" and rows["other_lr"]["test_top1_std"] == ""
    assert f"| {mean:.2f} ± {std:.2f} |" in (out / "report.md").read_text()


def test_missing_folder_is_one_line_exit_2(tmp_path):
    result = python("pgt_train.report", tmp_path / "nope", "--out", tmp_path / "r")
    assert result.returncode == 2
    assert result.stderr.strip() == f"pgt-report: error: run folder not found: {tmp_path / 'nope'}"
    assert not (tmp_path / "r").exists()


@pytest.mark.parametrize("breakage, message", [
    ("no_summary", "no summary.csv"),
    ("header_only", "no epochs recorded yet"),
    ("not_a_run", "no run folders in it"),
])
def test_bad_run_folders_exit_2(tmp_path, capsys, breakage, message):
    run = write_run(tmp_path / "run")
    if breakage == "no_summary":
        (run / "summary.csv").unlink()
    elif breakage == "header_only":
        (run / "summary.csv").write_text(",".join(SUMMARY_COLUMNS) + "\n")
    else:
        (run / "config.yaml").unlink()
    assert main([str(run), "--out", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1


def test_unfinished_run_below_a_parent_is_skipped(tmp_path, capsys):
    write_run(tmp_path / "table" / "done")
    started = write_run(tmp_path / "table" / "started")
    (started / "summary.csv").write_text(",".join(SUMMARY_COLUMNS) + "\n")  # still in its first epoch
    assert main([str(tmp_path / "table"), "--out", str(tmp_path / "r")]) == 0
    assert "skipped" in capsys.readouterr().err
    assert [r["group"] for r in read_csv(tmp_path / "r" / "report.csv")] == ["done"]
