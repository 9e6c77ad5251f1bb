"""pgt-report end to end: real tiny runs through the CLI, plus hand-made run folders for what a CPU cannot train
(a paper row's setup) and for exact numbers (seed statistics)."""
import csv
import statistics

import numpy as np
import pytest
from PIL import Image

from pgt_train import config
from pgt_train.report.cli import main
from pgt_train.writers import SUMMARY_COLUMNS, read_summary
from tests.helpers import REPO, finish, run_python, start_cli, tiny_run_args

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
TINY = tiny_run_args(None, "model.norm=none", "diag.interval=2", alpha=None)  # α per run below


def python(*args, timeout=180):
    return run_python("-m", *args, threads=1, timeout=timeout)  # two runs side by side on two cores


@pytest.fixture(scope="module")
def tiny_runs(tmp_path_factory):
    """A baseline and a PGT run (α 0.3) with every other setting equal, trained at the same time."""
    root = tmp_path_factory.mktemp("runs")
    procs = {name: start_cli(*TINY, f"pgt.alpha={alpha}", f"run.dir={root / name}", threads=1)
             for name, alpha in (("base", "null"), ("pgt", 0.3))}
    for name, proc in procs.items():
        done = finish(proc, timeout=180)
        assert done.returncode == 0, f"{name}: {done.stderr}"
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
    return float(read_summary(run_dir / "summary.csv")[-1][column])


@pytest.mark.slow
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


@pytest.mark.slow
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


def write_run(folder, *, overrides=(), recipe=None, overlays=(), train_top1=(40.0, 60.0), val_top1=(38.0, 55.0),
              extra=None):
    """A hand-made run folder: config.yaml as pgt-train writes it (from a paper recipe and reading overlays, or from
    synthetic defaults), summary.csv with the given per-epoch top-1 (and `extra` columns)."""
    base = [] if recipe else ["data.loader=synthetic"]
    cfg = config.load(REPO / recipe if recipe else None, [*base, f"run.dir={folder}", *overrides],
                      overlays=[REPO / o for o in overlays])
    folder.mkdir(parents=True)
    (folder / "config.yaml").write_text(config.to_yaml(cfg))
    with open(folder / "summary.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=SUMMARY_COLUMNS)
        writer.writeheader()
        for i, (train, val) in enumerate(zip(train_top1, val_top1)):
            writer.writerow({"epoch": i + 1, "lr": 0.1, "train_top1": train, "val_top1": val, "val_loss": 1.0,
                             "logit_norm": 5.0, **{c: v[i] for c, v in (extra or {}).items()}})
    return folder


T1_R50_PGT = "configs/paper/table1/resnet50_cosine_pgt0.05.yaml"  # T1#4, also Table 3's row 7
T1_R18 = "configs/paper/table1/resnet18_cosine.yaml"  # T1#13
T1_R18_PGT = "configs/paper/table1/resnet18_cosine_pgt0.25.yaml"  # T1#14
CODE_READING = "configs/reading/code.yaml"


@pytest.mark.usefixtures("tables_only")
def test_paper_row_beside_a_matching_run(tmp_path, capsys):
    write_run(tmp_path / "runs" / "r50_pgt", recipe=T1_R50_PGT)
    out = tmp_path / "report"
    assert main([str(tmp_path / "runs"), "--out", str(out)]) == 0
    md = (out / "report.md").read_text()
    line = next(l for l in md.splitlines() if l.startswith("| r50_pgt |"))
    assert "| 2/100 |" in line  # trained / scheduled epochs
    # ours 60 / 55 after 2 epochs, one seed: no spread to give
    assert "| 60.00 (one seed) | 55.00 (one seed) |" in line  # the seed band of a single seed
    # † T1#4: the README and Fig. 4(b) give ResNet-50 cosine PGT at α 0.3, Table 1 at 0.05 (paper_results.yaml)
    assert "| T1#4* † | 79.68 | 77.216 | -19.68 (single run) | -22.22 (single run) |" in line
    assert "† T1#4: the paper's sources disagree on this row's α (resnet50-cosine-which-alpha" in md
    assert "Paper numbers: the paper's Tables 1-3" in md
    assert "r50_pgt (T1#4*): trained 2 of 100 epochs" in md  # flagged: not the paper's whole schedule
    (row,) = read_csv(out / "report.csv")
    assert (row["paper_row"], float(row["paper_train"]), float(row["paper_test"])) == ("T1#4", 79.68, 77.216)
    assert (row["comparable"], row["reading"], row["impl"]) == ("yes", "paper", "exact")
    # The same run is Table 3's row 7 when that table is asked for.
    assert main([str(tmp_path / "runs"), "--out", str(out), "--table", "3"]) == 0
    assert "| T3#7* † | 79.68 | 77.216 |" in (out / "report.md").read_text()
    assert "Paper numbers: the paper's Table 3 (" in (out / "report.md").read_text()
    assert "Table 3 (ResNet-50 ablation)" in (out / "report.md").read_text()
    assert main([str(tmp_path / "runs"), "--out", str(out), "--table", "2"]) == 2
    assert "no run matches a row of the paper's Table 2" in capsys.readouterr().err


@pytest.mark.usefixtures("tables_only")
def test_another_batch_is_not_comparable(tmp_path):
    # Was "T1#4*" with a setup note; a run that differs from every row in a defining setting has no paper row now.
    write_run(tmp_path / "r50_b256", recipe=T1_R50_PGT, overrides=["data.batch_size=256"])
    assert main([str(tmp_path / "r50_b256"), "--out", str(tmp_path / "r")]) == 0
    (row,) = read_csv(tmp_path / "r" / "report.csv")
    assert (row["paper_row"], row["comparable"], row["nearest_row"]) == ("", "no", "T1#4")
    assert row["differs"] == "data.batch_size 256 (row: 1024)"
    assert row["paper_test"] == row["paper_test_diff"] == ""
    md = (tmp_path / "r" / "report.md").read_text()
    assert "| not comparable | — | — | — | — |" in md
    assert "r50_b256: nearest row T1#4; differs in data.batch_size 256 (row: 1024)" in md


@pytest.mark.usefixtures("tables_only")
def test_ten_class_run_configured_like_a_paper_row_is_not_comparable(tmp_path):
    write_run(tmp_path / "demo_like", recipe=T1_R18, overrides=["model.num_classes=10", "data.img_size=64"],
              val_top1=(60.0, 91.0))
    assert main([str(tmp_path / "demo_like"), "--out", str(tmp_path / "r")]) == 0
    (row,) = read_csv(tmp_path / "r" / "report.csv")
    assert (row["paper_row"], row["nearest_row"]) == ("", "T1#13")
    assert row["differs"] == "model.num_classes 10 (row: 1000), data.img_size 64 (row: 224)"
    md = (tmp_path / "r" / "report.md").read_text()
    assert "+20.79" not in md and "ImageNet-1K, 100 epochs, batch 1024" not in md


@pytest.mark.usefixtures("tables_only")
def test_table2_rows_from_their_recipes(tmp_path):
    # Was matched by clip mode and α alone; now a run stands beside a row only with the row recipe's settings.
    write_run(tmp_path / "agc_pgt", recipe="configs/paper/table2/resnet18_nobn_b256_agc_pgt0.25.yaml")
    write_run(tmp_path / "gc_pgt", recipe="configs/paper/table2/resnet18_nobn_b256_gc_pgt0.25.yaml")
    write_run(tmp_path / "agc_pgt_lambda", recipe="configs/paper/table2/resnet18_nobn_b256_agc_pgt0.25.yaml",
              overrides=["clip.value=0.01"])
    assert main([str(tmp_path), "--out", str(tmp_path / "r")]) == 0
    rows = {r["group"]: r for r in read_csv(tmp_path / "r" / "report.csv")}
    assert (rows["agc_pgt"]["paper_row"], rows["agc_pgt"]["paper_test"]) == ("T2#10", "68.856")
    assert (rows["gc_pgt"]["paper_row"], rows["gc_pgt"]["paper_test"]) == ("T2#9", "67.088")
    assert (rows["agc_pgt_lambda"]["nearest_row"], rows["agc_pgt_lambda"]["differs"]) == (
        "T2#10", "clip.value 0.01 (row: 0.08)")


@pytest.mark.usefixtures("tables_only")
def test_reading_and_impl_columns(tmp_path):
    write_run(tmp_path / "code_base", recipe=T1_R18, overlays=[CODE_READING])
    write_run(tmp_path / "code_pgt", recipe=T1_R18_PGT, overlays=[CODE_READING], val_top1=(38.0, 57.0))
    write_run(tmp_path / "paper_pgt_authors", recipe=T1_R18_PGT, overrides=["pgt.impl=authors"])
    write_run(tmp_path / "paper_base", recipe=T1_R18, val_top1=(38.0, 50.0))
    assert main([str(tmp_path), "--out", str(tmp_path / "r")]) == 0
    rows = {r["group"]: r for r in read_csv(tmp_path / "r" / "report.csv")}
    got = {g: (r["paper_row"], r["reading"], r["impl"], r["baseline"]) for g, r in rows.items()}
    assert got == {"code_base": ("T1#13", "code", "", ""), "code_pgt": ("T1#14", "code", "authors", "code_base"),
                   "paper_base": ("T1#13", "paper", "", ""),
                   "paper_pgt_authors": ("T1#14", "paper", "authors", "paper_base")}  # each paired in its reading
    line = next(l for l in (tmp_path / "r" / "report.md").read_text().splitlines() if l.startswith("| code_pgt |"))
    assert line.startswith("| code_pgt | code | resnet18 | cosine | 0.25 | authors | 0.1 |")


@pytest.mark.usefixtures("tables_only")
def test_baseline_is_paired_on_the_learning_rate_too(tmp_path):
    write_run(tmp_path / "pgt_lr0.025", overrides=["pgt.alpha=0.3", "optim.lr=0.025"], val_top1=(30.0, 52.0))
    write_run(tmp_path / "base_lr0.1", overrides=["optim.lr=0.1"], val_top1=(30.0, 40.0))
    write_run(tmp_path / "base_lr0.025", overrides=["optim.lr=0.025"], val_top1=(30.0, 50.0))
    assert main([str(tmp_path), "--out", str(tmp_path / "r")]) == 0
    pgt = next(r for r in read_csv(tmp_path / "r" / "report.csv") if r["group"] == "pgt_lr0.025")
    assert (pgt["baseline"], float(pgt["test_diff"]), pgt["test_diff_se"]) == ("base_lr0.025", 2.0, "")
    assert "| +2.00 (single run) |" in (tmp_path / "r" / "report.md").read_text()


@pytest.mark.usefixtures("tables_only")
def test_delta_carries_the_standard_error_of_the_difference(tmp_path):
    for name, alpha, finals in (("base", "null", (50.0, 52.0)), ("pgt", "0.3", (55.0, 58.0))):
        for seed, val in enumerate(finals):
            write_run(tmp_path / name / f"seed{seed}", overrides=[f"seed={seed}", f"pgt.alpha={alpha}"],
                      val_top1=(30.0, val))
    assert main([str(tmp_path / "base"), str(tmp_path / "pgt"), "--out", str(tmp_path / "r")]) == 0
    pgt = next(r for r in read_csv(tmp_path / "r" / "report.csv") if r["baseline"])
    se = (statistics.variance([55.0, 58.0]) / 2 + statistics.variance([50.0, 52.0]) / 2) ** 0.5
    assert float(pgt["test_diff"]) == pytest.approx(5.5) and float(pgt["test_diff_se"]) == pytest.approx(se)
    assert f"| +5.50 ± {se:.2f} |" in (tmp_path / "r" / "report.md").read_text()


@pytest.mark.usefixtures("tables_only")
def test_same_seed_twice_is_one_seed(tmp_path):
    write_run(tmp_path / "first", overrides=["pgt.alpha=0.3"], val_top1=(30.0, 50.0))
    write_run(tmp_path / "again", overrides=["pgt.alpha=0.3"], val_top1=(30.0, 50.5))
    assert main([str(tmp_path), "--out", str(tmp_path / "r")]) == 0
    (row,) = read_csv(tmp_path / "r" / "report.csv")
    assert (row["seeds"], row["seed_list"], row["test_top1_std"]) == ("1", "0", "")
    assert row["duplicates"] == str(tmp_path / "first")  # same epochs: the first in path order ("again") counts
    md = (tmp_path / "r" / "report.md").read_text()
    assert "| 1 (+1 dup.) |" in md and "± 0.00" not in md
    assert f"{tmp_path / 'first'} repeats seed 0 of {tmp_path / 'again'} with the same settings; counted once" in md


def test_tables_without_matplotlib_say_what_to_install(tmp_path, tables_only, capsys):
    write_run(tmp_path / "run")
    assert main([str(tmp_path / "run"), "--out", str(tmp_path / "r")]) == 0
    assert (tmp_path / "r" / "report.csv").is_file() and not list((tmp_path / "r").glob("*.png"))
    hint = 'pip install "pgt-train[report]"'
    assert hint in capsys.readouterr().err and hint in (tmp_path / "r" / "report.md").read_text()


def test_zeroed_counts_have_integer_ticks(tmp_path):
    from pgt_train.report import figures, runs
    write_run(tmp_path / "run", train_top1=(1, 2, 3), val_top1=(1, 2, 3),
              extra={"zeroed_filters": (0, 1, 2), "zeroed_features": (0, 0, 1)})
    groups = runs.group_runs(runs.load_runs([tmp_path / "run"])[0])
    fig = figures.zeroed_figure(groups, groups)
    fig.canvas.draw()
    for ax in fig.axes:
        for ticks in (ax.get_xticks(), ax.get_yticks()):
            assert len(ticks) > 1 and all(float(t).is_integer() for t in ticks), ticks


@pytest.mark.usefixtures("tables_only")
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


@pytest.mark.slow
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


@pytest.mark.usefixtures("tables_only")
def test_unfinished_run_below_a_parent_is_skipped(tmp_path, capsys):
    write_run(tmp_path / "table" / "done")
    started = write_run(tmp_path / "table" / "started")
    (started / "summary.csv").write_text(",".join(SUMMARY_COLUMNS) + "\n")  # still in its first epoch
    assert main([str(tmp_path / "table"), "--out", str(tmp_path / "r")]) == 0
    assert "skipped" in capsys.readouterr().err
    assert [r["group"] for r in read_csv(tmp_path / "r" / "report.csv")] == ["done"]


def test_paper_rows_are_read_again_after_a_recipe_changes(tmp_path):
    """The rows are cached per process; an edited recipe (or another configs folder) is read afresh."""
    import shutil
    from pgt_train.report.paper import load_paper_rows
    configs = shutil.copytree(REPO / "configs", tmp_path / "configs")
    before = {r.id: r.readings["paper"]["optim.lr"] for r in load_paper_rows(configs, table=1)}
    recipe = configs / "paper" / "table1" / "seresnet50_cosine.yaml"
    recipe.write_text(recipe.read_text() + "optim:\n  lr: 0.123\n")
    after = {r.id: r.readings["paper"]["optim.lr"] for r in load_paper_rows(configs, table=1)}
    assert after["T1#1"] == 0.123 != before["T1#1"] and after["T1#3"] == before["T1#3"]
