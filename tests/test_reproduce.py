"""scripts/reproduce.py as a user runs it: --dry-run plans, skip/resume/start, and one-line errors."""
import csv
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from pgt_train import config
from tests.helpers import REPO, run_python

pytestmark = pytest.mark.slow  # each test runs a script in a subprocess
SCRIPT = REPO / "scripts" / "reproduce.py"
INDEX = yaml.safe_load((REPO / "configs" / "paper" / "index.yaml").read_text())


def reproduce(*args):
    return run_python(SCRIPT, *args, timeout=60)


def plan(stdout: str) -> list[tuple[str, list[str]]]:
    """(status, command argv) per row: each row prints '[i/n] label: status run_dir' and then its command (after the
    lines that name row-defining overrides)."""
    lines = [line for line in stdout.splitlines() if not line.startswith("reproduce: ")]
    assert len(lines) % 2 == 0, stdout
    return [(head.rsplit(": ", 1)[1].split()[0], shlex.split(cmd)) for head, cmd in zip(lines[::2], lines[1::2])]


def expected(what: str, name: str, runs: Path) -> list[tuple[str, list[str]]]:
    """(recipe, overrides) per row, from the index, under the default reading (paper) and its impl (exact)."""
    if what == "--table":
        out = []
        for e in INDEX[f"table{name}"]:
            cfg = config.load(REPO / e["recipe"])
            impl = "exact" if cfg.pgt.alpha is not None else "nopgt"
            out.append((e["recipe"], [f"run.dir={runs / 'paper' / impl / Path(cfg.run.dir).relative_to('runs/paper')}"]))
        return out
    spec = INDEX["grids"][name]
    return [(spec["recipe"], [*spec["overrides"], f"pgt.alpha={a}", f"run.dir={runs}/paper/exact/grid/{name}/alpha{a}"])
            for a in spec["alphas"]]


@pytest.mark.parametrize("what,name", [("--table", "1"), ("--table", "2"), ("--table", "3"),
                                       ("--grid", "resnet18"), ("--grid", "resnet50")])
def test_dry_run_prints_one_command_per_row(tmp_path, what, name):
    data = tmp_path / "imagenet"  # need not exist for a dry run
    r = reproduce(what, name, "--dry-run", "--runs-root", str(tmp_path), "--data", str(data))
    assert r.returncode == 0, r.stderr
    rows = plan(r.stdout)
    want = expected(what, name, tmp_path)
    assert len(rows) == len(want)
    for (status, cmd), (recipe, overrides) in zip(rows, want):
        assert status == "start"
        assert cmd[:4] == [sys.executable, "-m", "pgt_train", "--config"]
        assert cmd[4] == recipe and cmd[5:7] == ["--reading", "paper"] and cmd[-2:] == ["--resume", "auto"]
        assert cmd[7:-2] == [*overrides, f"data.root={data}"]


def test_gpus_use_torch_distributed_run_of_this_python(tmp_path):
    r = reproduce("--table", "2", "--gpus", "4", "--dry-run", "--runs-root", str(tmp_path))
    assert r.returncode == 0, r.stderr
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=4", "-m", "pgt_train"]
    assert all(cmd[:7] == launcher for _, cmd in plan(r.stdout))  # no `torchrun` on PATH needed


def test_reading_and_impl_pick_separate_run_folders_and_baselines_are_shared(tmp_path):
    folders = {}
    for args in (["--reading", "paper"], ["--reading", "code"], ["--reading", "code", "--impl", "official"]):
        r = reproduce("--table", "1", "--dry-run", "--runs-root", str(tmp_path), *args)
        assert r.returncode == 0, r.stderr
        rows = plan(r.stdout)
        assert all(cmd[cmd.index("--reading") + 1] == args[1] for _, cmd in rows)
        folders[tuple(args)] = [next(a for a in cmd if a.startswith("run.dir=")) for _, cmd in rows]
    paper, code, official = folders.values()
    assert paper[0] == f"run.dir={tmp_path}/paper/nopgt/table1/seresnet50_cosine"
    assert paper[1] == f"run.dir={tmp_path}/paper/exact/table1/seresnet50_cosine_pgt0.3"
    assert code[1] == f"run.dir={tmp_path}/code/authors/table1/seresnet50_cosine_pgt0.3"  # the reading's own impl
    assert official[1] == f"run.dir={tmp_path}/code/official/table1/seresnet50_cosine_pgt0.3"
    assert official[0] == code[0]  # no PGT: one baseline per reading, whatever --impl
    assert len(set(paper) | set(code) | set(official)) == len(paper) + len(code) + len(official) - 7
    r = reproduce("--table", "1", "--dry-run", "--runs-root", str(tmp_path), "--reading", "code", "--impl", "official")
    pgt_row = plan(r.stdout)[1][1]
    assert "pgt.impl=official" in pgt_row and "pgt.impl=official" not in plan(r.stdout)[0][1]


@pytest.mark.parametrize("script", ["reproduce.py", "proxy_study.py"])
def test_closed_stdout_stops_quietly(script):
    """`--dry-run | head -1`: the reader is gone before the first line; exit 141 as SIGPIPE, no traceback."""
    args = ["--table", "1", "--dry-run"] if script == "reproduce.py" else ["--dry-run"]
    proc = subprocess.Popen([sys.executable, str(REPO / "scripts" / script), *args], cwd=REPO,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    proc.stdout.close()  # the pipe's reader exits at once
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=60) == 141 and err == ""


def write_summary(run_dir: Path, epochs: int) -> None:
    run_dir.mkdir(parents=True)
    (run_dir / "summary.csv").write_text("epoch,lr,val_top1\n" + "".join(f"{e},0.1,50.0\n" for e in range(1, epochs + 1)))


def test_finished_runs_skip_and_interrupted_runs_resume(tmp_path):
    write_summary(tmp_path / "paper" / "nopgt" / "table1" / "resnet18_step", 100)  # finished: epoch 100's row
    write_summary(tmp_path / "paper" / "nopgt" / "table1" / "resnet18_cosine", 99)  # one epoch short, checkpoint kept
    (tmp_path / "paper" / "nopgt" / "table1" / "resnet18_cosine" / "last.pth").write_bytes(b"")
    write_summary(tmp_path / "paper" / "exact" / "grid" / "resnet18" / "alpha0.5", 50)  # a grid run ends at 50
    r = reproduce("--table", "1", "--dry-run", "--runs-root", str(tmp_path))
    status = {cmd[4].split("/")[-1]: s for s, cmd in plan(r.stdout)}
    assert status["resnet18_step.yaml"] == "skip"
    assert status["resnet18_cosine.yaml"] == "resume"
    assert status["resnet18_step_pgt0.25.yaml"] == "start"
    r = reproduce("--grid", "resnet18", "--dry-run", "--runs-root", str(tmp_path))
    status = {next(a for a in cmd if a.startswith("pgt.alpha=")): s for s, cmd in plan(r.stdout)}
    assert status["pgt.alpha=0.5"] == "skip" and status["pgt.alpha=0.4"] == "start"


@pytest.mark.parametrize("args,message", [
    (["--table", "4", "--dry-run"], "no table '4'"),
    (["--grid", "resnet34", "--dry-run"], "no grid 'resnet34'"),
    (["--table", "1", "--reading", "words", "--dry-run"], "--reading: 'words' is not one of: paper, code"),
    (["--table", "1", "--impl", "approx", "--dry-run"], "--impl: 'approx' is not one of: exact, authors, official"),
    (["--table", "1", "--data", "/nonexistent/imagenet"], "data folder not found: /nonexistent/imagenet"),
    (["--table", "1", "--dry-run", "sched.epochs"], "'sched.epochs' is not a key=value override"),
    (["--table", "1", "--rows", "15", "--dry-run"], "--rows: row 15 does not exist (this one has 14 rows)"),
    (["--table", "1", "--rows", "1,x", "--dry-run"], "--rows: '1,x' is not a list of row numbers"),
    (["--table", "1", "--nodes", "2", "--dry-run"], "need --launcher slurm"),
    (["--table", "1", "--gpus", "0", "--dry-run"], "--gpus must be >= 1"),
    (["--table", "1", "--launcher", "slurm", "--max-running", "0", "--dry-run"], "--max-running must be >= 1"),
])
def test_bad_input_is_one_line_and_runs_nothing(args, message):
    r = reproduce(*args)
    assert r.returncode != 0 and r.stdout == ""
    assert r.stderr.count("\n") == 1 and message in r.stderr


def test_trailing_overrides_apply_to_every_selected_row(tmp_path):
    r = reproduce("--table", "1", "--rows", "2,5", "--dry-run", "--runs-root", str(tmp_path), "sched.epochs=30",
                  "data.batch_size=64")
    assert r.returncode == 0, r.stderr
    rows = plan(r.stdout)
    assert len(rows) == 2 and "\n[2/14] " in r.stdout and "\n[5/14] " in r.stdout
    assert all({"sched.epochs=30", "data.batch_size=64"} <= set(cmd) for _, cmd in rows)


def test_proxy_study_dry_run_lists_every_recipe_and_seed(tmp_path):
    result = run_python("scripts/proxy_study.py", "--dry-run", "--seeds", "0", "1", "--runs-root", tmp_path / "runs")
    assert result.returncode == 0, result.stderr
    recipes = sorted(p.stem for p in (REPO / "configs" / "proxy").glob("*.yaml") if p.stem != "base")
    assert len(recipes) >= 4
    for recipe in recipes:
        for seed in (0, 1):
            assert f"{recipe} seed {seed}: run" in result.stdout
            assert f"run.dir={tmp_path / 'runs' / recipe / f'seed{seed}'}" in result.stdout
    assert "pgt_train.report" in result.stdout


def test_figure_hook_baselines_and_step_epochs(tmp_path):
    r = reproduce("--figure", "4c", "--dry-run", "--runs-root", str(tmp_path))
    assert r.returncode == 0, r.stderr
    (s1, pgt), (s2, base) = plan(r.stdout)
    assert pgt[4] == INDEX["figures"]["fig4c"][0]["recipe"] and base[4] == INDEX["table1"][2]["recipe"]
    assert f"run.dir={tmp_path}/paper/nopgt/table1/resnet50_cosine" in base  # Table 1 row 3's own run folder
    r = reproduce("--table", "1", "--reading", "code", "--hook-baselines", "--step-epochs", "90", "--dry-run",
                  "--runs-root", str(tmp_path))
    assert r.returncode == 0, r.stderr
    rows = dict(zip([e["recipe"] for e in INDEX["table1"]], [cmd for _, cmd in plan(r.stdout)]))
    step_base = rows["configs/paper/table1/resnet50_step.yaml"]
    assert "pgt.alpha=1.0" in step_base and "sched.epochs=90" in step_base
    assert f"run.dir={tmp_path}/code/authors/table1/resnet50_step-90ep" in step_base
    cosine_pgt = rows["configs/paper/table1/resnet50_cosine_pgt0.05.yaml"]
    assert not any(a.startswith(("pgt.alpha=", "sched.epochs=")) for a in cosine_pgt)
    r = reproduce("--table", "1", "--hook-baselines", "--dry-run")  # paper reading: exact at alpha 1 is CE
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "--impl authors or official" in r.stderr
    r = reproduce("--figure", "9", "--dry-run")
    assert r.returncode == 2 and "no figure '9'" in r.stderr


def folders(stdout: str) -> list[str]:
    return [line.rsplit(" ", 1)[1] for line in stdout.splitlines() if line.startswith("[")]


def test_a_row_defining_override_is_named_with_the_rows_it_changes_and_carried_by_their_folders(tmp_path):
    # Was applied to all 14 rows silently, baselines included, into folders named for the paper's rows.
    plain = folders(reproduce("--table", "1", "--dry-run", "--runs-root", str(tmp_path)).stdout)
    r = reproduce("--table", "1", "--dry-run", "--runs-root", str(tmp_path), "pgt.alpha=0.25", "data.workers=3",
                  "data.root=/elsewhere", "run.progress=false", "data.loader=dali")  # dali: the same images
    assert r.returncode == 0, r.stderr
    notes = [line for line in r.stdout.splitlines() if line.startswith("reproduce: ")]
    assert notes == ["reproduce: pgt.alpha=0.25 changes the recipe of rows 1-9, 11, 13 of 14; their run folders "
                     "are named for it"]
    alphas = [config.load(REPO / e["recipe"]).pgt.alpha for e in INDEX["table1"]]
    for alpha, before, after in zip(alphas, plain, folders(r.stdout)):
        name = Path(before).name
        assert Path(after).name == (name if alpha == 0.25 else name + "+pgt.alpha=0.25"), after
    assert all(cmd.count("pgt.alpha=0.25") == 1 for _, cmd in plan(r.stdout))  # still applied to every row
    r = reproduce("--table", "1", "--rows", "13", "--dry-run", "--runs-root", str(tmp_path), "data.workers=3",
                  "data.root=/elsewhere", "run.progress=false", "diag.interval=5")
    assert "reproduce: " not in r.stdout and folders(r.stdout) == [plain[12]], "non-defining: names unchanged"


def test_long_overrides_name_folders_by_a_stable_hash(tmp_path):
    tiny = ["data.loader=synthetic", "data.img_size=32", "model.num_classes=4", "data.batch_size=8", "sched.epochs=2",
            "sched.warmup_epochs=1", "data.crop_scale=[0.5,1.0]"]
    runs = [folders(reproduce("--table", "2", "--rows", "1,2", "--dry-run", "--runs-root", str(tmp_path),
                              *args).stdout) for args in (tiny, tiny[::-1], [*tiny, "sched.epochs=3"])]
    assert runs[0] == runs[1], "the same overrides in another order: the same folders"
    assert all(re.search(r"_b1024(_pgt0.92)?\+overrides-[0-9a-f]{8}$", f) for f in runs[0]), runs[0]
    assert runs[2][0] != runs[0][0]


def test_pgt_report_never_places_an_overridden_row_beside_the_paper(tmp_path):
    """Row 13 (T1#13, resnet18 cosine) as reproduce.py runs it, with and without pgt.alpha=0.5: hand-made run
    folders from the printed commands; only the plain one stands beside the paper's row."""
    from pgt_train.report.cli import main as report
    from pgt_train.writers import RunWriter
    for args in ([], ["pgt.alpha=0.5"]):
        r = reproduce("--table", "1", "--rows", "13", "--dry-run", "--runs-root", str(tmp_path / "runs"), *args)
        (_, cmd), = plan(r.stdout)
        cfg = config.load(REPO / cmd[4], cmd[7:-2], [config.reading_path(cmd[6])])
        Path(cfg.run.dir).mkdir(parents=True)
        (Path(cfg.run.dir) / "config.yaml").write_text(config.to_yaml(cfg))
        writer = RunWriter(Path(cfg.run.dir), enabled=True)
        writer.epoch({"epoch": 1, "lr": 0.1, "train_loss": 1.0, "train_top1": 40.0, "val_loss": 1.5, "val_top1": 35.0,
                      "val_top5": 60.0, "val_images": 50, "train_img_per_s": 1.0, "epoch_time_s": 1.0})
        writer.close()
    assert report([str(tmp_path / "runs"), "--out", str(tmp_path / "report")]) == 0
    with open(tmp_path / "report" / "report.csv", newline="") as f:
        rows = {Path(r["group"]).name: r for r in csv.DictReader(f)}
    assert rows["resnet18_cosine"]["paper_row"] == "T1#13"
    overridden = rows["resnet18_cosine+pgt.alpha=0.5"]
    assert (overridden["paper_row"], overridden["comparable"]) == ("", "no") and "pgt.alpha" in overridden["differs"]


def test_a_renamed_row_runs_writes_its_overrides_beside_it_and_is_skipped_when_rerun(tmp_path):
    tiny = ["data.loader=synthetic", "data.train_size=64", "data.val_size=16", "data.img_size=32",
            "model.num_classes=4", "data.batch_size=8", "data.workers=0", "sched.epochs=1", "sched.warmup_epochs=0",
            "optim.lr=0.002", "run.progress=false"]
    args = ("--table", "2", "--rows", "1", "--runs-root", str(tmp_path), *tiny)
    first = run_python(SCRIPT, *args, timeout=180)
    assert first.returncode == 0, first.stderr
    (run_dir,) = folders(first.stdout)
    assert re.search(r"/nopgt/table2/resnet18_nobn_b1024\+overrides-[0-9a-f]{8}$", run_dir), run_dir
    written = set((Path(run_dir) / "overrides.txt").read_text().splitlines())
    assert {"data.loader=synthetic", "sched.epochs=1", "model.num_classes=4"} <= written
    assert not any(t.startswith(("data.workers=", "run.")) for t in written), "non-defining: not part of the row"
    again = run_python(SCRIPT, *args, timeout=60)
    assert again.returncode == 0 and f": skip {run_dir}" in again.stdout, again.stdout
