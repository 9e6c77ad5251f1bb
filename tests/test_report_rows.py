"""pgt-report trusts no row (issue 19, item 7): epochs come from the epoch column, a folder whose epochs repeat is no
result, a half-written last row is not read, a run continued into a new folder is read as finished, and an epoch
validated on no image is no result. Run folders are real: summary.csv written by pgt_train.writers.RunWriter (then
doubled or cut as two appending writers or a killed one left it before runs were locked and rows written whole), or
trained by pgt-train itself."""
import csv

import pytest
import yaml

from pgt_train import config
from pgt_train.report.cli import main
from pgt_train.writers import RunWriter, read_summary
from tests.helpers import REPO, finish, start_cli, tiny_run_args

T1_R18 = "configs/paper/table1/resnet18_cosine.yaml"  # T1#13, 100 epochs


pytestmark = pytest.mark.usefixtures("tables_only")  # these tests read tables only


def write_config(folder, *, recipe=None, overrides=()):
    base = [] if recipe else ["data.loader=synthetic"]
    cfg = config.load(REPO / recipe if recipe else None, [*base, f"run.dir={folder}", *overrides])
    folder.mkdir(parents=True)
    (folder / "config.yaml").write_text(config.to_yaml(cfg))
    return folder


def metrics(epoch, *, val_top1, val_images=50):
    return {"epoch": epoch, "lr": 0.1, "train_loss": 1.0, "train_top1": val_top1 + 5.0, "val_loss": 1.5,
            "val_top1": val_top1, "val_top5": 90.0, "val_images": val_images, "train_img_per_s": 100.0,
            "epoch_time_s": 1.0}


def write_epochs(folder, val_top1, *, copies=1, val_images=50):
    """summary.csv as pgt-train's RunWriter writes it. `copies` 2: every row twice, in the order two processes
    appending to one run.dir's summary.csv left them before runs were locked (1, 1, 2, 2, ...)."""
    writer = RunWriter(folder, enabled=True)
    for epoch, top1 in enumerate(val_top1, start=1):
        writer.epoch(metrics(epoch, val_top1=top1, val_images=val_images if epoch == len(val_top1) else 50))
    writer.close()
    summary = folder / "summary.csv"
    header, *rows = summary.read_text().splitlines(keepends=True)
    summary.write_text(header + "".join(row * copies for row in rows))
    return folder


def read_csv(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def report_line(out, group):
    return next(l for l in (out / "report.md").read_text().splitlines() if l.startswith(f"| {group} |"))


def test_epochs_written_twice_are_no_result(tmp_path, capsys):
    # Was "4/100" beside T1#13, and the doubled folder won the seed tie over the clean one (4 rows > 3).
    runs = tmp_path / "runs"
    write_epochs(write_config(runs / "clean", recipe=T1_R18), (20.0, 30.0, 40.0))
    twice = write_epochs(write_config(runs / "twice", recipe=T1_R18), (21.0, 31.0), copies=2)
    assert [r["epoch"] for r in read_summary(twice / "summary.csv")] == ["1", "1", "2", "2"]
    out = tmp_path / "r"
    assert main([str(runs), "--out", str(out)]) == 0
    (row,) = read_csv(out / "report.csv")
    assert (row["group"], row["duplicates"], row["epochs_trained"], row["paper_row"]) == ("clean", "", "3", "T1#13")
    assert "| 3/100 |" in report_line(out, "clean")
    err = capsys.readouterr().err
    assert f"skipped {twice / 'summary.csv'}: epoch 1 is recorded 2 times (2 epochs repeated)" in err
    assert "twice" not in (out / "report.md").read_text().split("## Run folders")[0]
    assert main([str(twice), "--out", str(tmp_path / "r2")]) == 2  # named on its own: bad input, nothing written
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "two processes wrote this run folder" in err
    assert not (tmp_path / "r2").exists()


def test_doubled_rows_do_not_read_as_more_epochs_than_scheduled(tmp_path, capsys):
    # Was "4/2": every epoch of a 2-epoch run written twice.
    run = write_epochs(write_config(tmp_path / "run", overrides=["sched.epochs=2", "sched.warmup_epochs=0"]), (30.0, 40.0), copies=2)
    assert main([str(run), "--out", str(tmp_path / "r")]) == 2
    assert "epoch 1 is recorded 2 times" in capsys.readouterr().err


# Cut inside "75" of val_top1, or just after the epoch number (a writer killed mid-row); or cut inside "75" with
# the rest of the file zeros, its length kept (a crash that lost the last block's data but not the file size).
@pytest.mark.parametrize("cut_after, zeros", [("7", False), ("2", False), ("7", True)])
def test_half_written_last_row_is_not_read(tmp_path, capsys, cut_after, zeros):
    # Was test top-1 7.00 for 75: the cut row read as a value, its missing cells as empty.
    run = write_epochs(write_config(tmp_path / "run", overrides=["sched.epochs=2", "sched.warmup_epochs=0"]), (60.0, 75.0))
    summary = run / "summary.csv"
    text = summary.read_text()
    last_row = text.rstrip("\r\n").rsplit("\n", 1)[1]
    cut = text.rindex(last_row) + (last_row.index(",75,") + 2 if cut_after == "7" else 1)
    summary.write_text(text[:cut] + ("\0" * (len(text) - cut) if zeros else ""))
    assert summary.read_text().rstrip("\0").endswith(",7" if cut_after == "7" else "\n2")
    out = tmp_path / "r"
    assert main([str(run), "--out", str(out)]) == 0
    (row,) = read_csv(out / "report.csv")
    assert (float(row["test_top1"]), row["epochs_trained"]) == (60.0, "1")
    assert "| 1/2 |" in report_line(out, "run") and "75" not in row["best_test_top1"]
    note = f"{summary}: last row not read (row 2: no line end)"
    assert note in capsys.readouterr().err and note in (out / "report.md").read_text()


def test_run_without_validation_images_is_no_result(tmp_path, capsys):
    # Was listed with test top-1 0.00 (val_loss 0, val_images 0) beside the good run.
    write_epochs(write_config(tmp_path / "runs" / "good"), (30.0, 40.0))
    empty = write_epochs(write_config(tmp_path / "runs" / "no_val", overrides=["pgt.alpha=0.3"]), (30.0, 0.0),
                         val_images=0)
    out = tmp_path / "r"
    assert main([str(tmp_path / "runs"), "--out", str(out)]) == 0
    assert [r["group"] for r in read_csv(out / "report.csv")] == ["good"]
    assert f"skipped {empty / 'summary.csv'}: epoch 2 was validated on 0 images" in capsys.readouterr().err
    assert main([str(empty), "--out", str(tmp_path / "r2")]) == 2
    assert "no readable validation image" in capsys.readouterr().err


def test_summary_that_is_not_text_is_one_line(tmp_path, capsys):
    run = write_epochs(write_config(tmp_path / "run"), (30.0, 40.0))
    (run / "summary.csv").write_bytes(b"\xff\xfe\x00garbage")
    assert main([str(run), "--out", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "not a summary.csv pgt-train writes" in err


@pytest.mark.slow
def test_run_continued_into_a_new_folder_reads_finished(tmp_path, capsys):
    # Was "1/2" for a finished run: the new folder holds epoch 2 only, one row, and rows were counted as epochs.
    tiny = tiny_run_args(None, "model.norm=none", epochs=2)
    first = finish(start_cli(*tiny, f"run.dir={tmp_path / 'a'}", "--run-epochs", "1"), timeout=120)
    assert first.returncode == 0, first.stderr
    # b continues a's run in a new folder; c is a new run from a's weights (--init-from), two epochs of its own.
    procs = [start_cli(*tiny, f"run.dir={tmp_path / 'b'}", "--resume", tmp_path / "a" / "last.pth"),
             start_cli(*tiny, f"run.dir={tmp_path / 'c'}", "--init-from", tmp_path / "a" / "last.pth")]
    for proc in procs:
        done = finish(proc, timeout=120)
        assert done.returncode == 0, done.stderr
    assert [r["epoch"] for r in read_summary(tmp_path / "b" / "summary.csv")] == ["2"]
    out = tmp_path / "r"
    assert main([str(tmp_path / "b"), "--out", str(out)]) == 0
    (row,) = read_csv(out / "report.csv")
    assert (row["epochs_trained"], row["epochs"]) == ("2", "2")
    cells = report_line(out, "b").split(" | ")
    assert cells[10] == "2"  # the Epochs column: finished, not "1/2"
    assert "epochs 1-1 were trained in another folder" in (out / "report.md").read_text()
    # All three: a and b are one seed of one run, and b counts (it reached epoch 2), a is its duplicate; c, from
    # a's weights, is another run (model.init_from defines a run), finished on its own schedule.
    assert main([str(tmp_path), "--out", str(out)]) == 0
    rows = {r["group"]: r for r in read_csv(out / "report.csv")}
    assert set(rows) == {"b", "c"}
    assert (rows["b"]["duplicates"], rows["b"]["epochs_trained"]) == (str(tmp_path / "a"), "2")
    assert (rows["c"]["duplicates"], rows["c"]["epochs_trained"], rows["c"]["epochs"]) == ("", "2", "2")


@pytest.mark.parametrize("tamper, message", [
    (lambda text: text + "zzz: 1\n", "unknown key 'zzz'"),
    (lambda text: text.replace("seed: 0\n", "seed: zero\n", 1), "seed: expected int, got 'zero'"),
    (lambda text: text.replace("  alpha: null\n", "  alpha: 7.0\n", 1), "pgt.alpha: must lie in"),
], ids=["unknown key", "wrong type", "out of range"])
def test_config_yaml_is_read_as_strictly_as_a_recipe(tmp_path, capsys, tamper, message):
    # Was grouped like any other run: pgt-report read config.yaml keys that pgt-train refuses.
    good = write_epochs(write_config(tmp_path / "runs" / "good"), (30.0, 40.0))
    bad = write_epochs(write_config(tmp_path / "runs" / "bad"), (30.0, 40.0))
    config_yaml = bad / "config.yaml"
    config_yaml.write_text(tamper(config_yaml.read_text()))
    out = tmp_path / "r"
    assert main([str(tmp_path / "runs"), "--out", str(out)]) == 0
    (row,) = read_csv(out / "report.csv")
    assert (row["group"], row["seeds"], row["duplicates"]) == ("good", "1", ""), "the refused run is no seed of it"
    err = capsys.readouterr().err
    line = f"pgt-report: skipped {config_yaml}: {message}"
    assert line in err and err.count(str(config_yaml)) == 1, err
    footer = (out / "report.md").read_text().split("### Run folders not reported (no result)")[1]
    assert f"- {config_yaml}: {message}" in footer and str(good) not in footer
    assert main([str(bad), "--out", str(tmp_path / "r2")]) == 2  # named on its own: bad input, nothing written
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and str(config_yaml) in err and message in err
    assert not (tmp_path / "r2").exists()


def test_older_config_yaml_without_newer_keys_still_reads(tmp_path):
    run = write_epochs(write_config(tmp_path / "old"), (30.0, 40.0))
    tree = config.read_yaml(run / "config.yaml")
    del tree["diag"], tree["pgt"]["authors_fp16"], tree["data"]["decoder"]  # keys older versions did not write
    (run / "config.yaml").write_text(yaml.safe_dump(tree))
    assert main([str(run), "--out", str(tmp_path / "r")]) == 0
    assert [r["group"] for r in read_csv(tmp_path / "r" / "report.csv")] == ["old"]
