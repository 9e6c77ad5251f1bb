#!/usr/bin/env python
"""Runs every row of one paper table (or one alpha grid) from configs/paper/index.yaml, one after another.

    python scripts/reproduce.py --table 1 --gpus 4 --data /data/imagenet [--runs-root runs/paper] [--dry-run]
    python scripts/reproduce.py --grid resnet18 --gpus 4 --data /data/imagenet
    python scripts/reproduce.py --table 1 --reading code [--impl exact] ...   # the authors' code, not the paper's words
    python scripts/reproduce.py --table 1 --launcher slurm --gpus 4 --time 24:00:00 --max-running 8 --data /data/imagenet
    python scripts/reproduce.py --figure 4c --gpus 4 --data /data/imagenet    # Fig. 4(c): PGT 60 epochs vs baseline 100
    python scripts/reproduce.py --grid cifar10_resnet20 --data /data/cifar10  # Fig. 13 (ImageFolder layout, 32 px)
    python scripts/reproduce.py --table 1 --reading code --hook-baselines      # baselines with the hook at α 1
    python scripts/reproduce.py --table 1 --reading code --step-epochs 90      # step rows stop at 90 epochs

Each row trains in its own run folder with --resume auto, so rerunning the same command skips finished rows,
resumes the interrupted one and starts the rest: <runs-root>/<reading>/<impl>/<the recipe's run.dir below
runs/paper>, where <impl> is `nopgt` for rows without PGT (one baseline per reading, shared by every --impl).
--reading picks configs/reading/<reading>.yaml (docs/fidelity.md, "Two readings"); --impl overrides pgt.impl (default:
the reading's own, exact for the paper and authors for the code). Several GPUs: python -m torch.distributed.run.
Trailing key=value overrides apply to every row (as on pgt-train); --rows picks some rows (1-based, as printed).
One that changes what defines a row (run identity, config.is_defining, or a key the rows differ in) is named in one
line with the rows whose recipe it changes, and those rows' folders carry it: resnet18_cosine_pgt0.25+pgt.alpha=0.5
(a short stable hash, +overrides-1a2b3c4d, where the changes are long, with overrides.txt in the folder), so a
folder never claims a paper row it is not. Others (data.root, data.workers, run.*, ...) leave the names alone.

--launcher slurm submits the rows not finished as ONE job array (sbatch --array=...%<max-running>), each task
scripts/slurm/train.sbatch on its row (its time-limit warning checkpoints and requeues the task). Each run
folder gets a `slurm_job` file naming its array task; a rerun skips rows whose task is still queued or running
(squeue), so no run folder ever has two jobs, and submits the rest again. Why sbatch and not submitit:
docs/cluster.md.
--ablation temperature adds, beside every PGT row, the arms that separate PGT's temperature from its step size
(pgt_train/ablation.py); an arm the row's settings refuse is left out with one line saying why.
Output to a closed pipe (`--dry-run | head -1`) stops quietly with exit status 141, as SIGPIPE would.
"""
from __future__ import annotations

import argparse
import hashlib
import os
import re
import shlex
import subprocess
import sys
import time
from pathlib import Path

import yaml

from pgt_train import ablation, config
from pgt_train.errors import exit_quietly_on_closed_pipe
from pgt_train.pgt import IMPLS as PGT_IMPLS
from pgt_train.writers import run_finished

ROOT = Path(__file__).resolve().parents[1]
SBATCH = ROOT / "scripts" / "slurm" / "train.sbatch"
JOB_MARKER = "slurm_job"  # in each run folder: the array task (<array id>_<index>) that runs it
OVERRIDES_FILE = "overrides.txt"  # beside a run whose folder name carries a hash of its overrides: the overrides
ACTIVE_STATES = {"PENDING", "RUNNING", "REQUEUED", "REQUEUE_HOLD", "REQUEUE_FED", "CONFIGURING", "COMPLETING",
                 "SUSPENDED", "RESIZING", "SIGNALING", "STAGE_OUT", "RESV_DEL_HOLD"}
INDEX = ROOT / "configs" / "paper" / "index.yaml"
RECIPE_RUNS_ROOT = Path("runs/paper")  # every recipe's run.dir lies under this; --runs-root replaces it


def fail(message: str) -> None:
    print(f"reproduce: error: {message}", file=sys.stderr)
    sys.exit(2)


def rows_of(index: dict, table: str | None, grid: str | None, figure: str | None = None) -> list[tuple[str, str, list[str]]]:
    """(label, recipe path relative to the repo, overrides) for each run of the table, grid or figure."""
    if figure is not None:
        rows = index["figures"].get(f"fig{figure}")
        if rows is None:
            fail(f"no figure '{figure}' in {INDEX.relative_to(ROOT)} (valid: "
                 f"{', '.join(k.removeprefix('fig') for k in index['figures'])})")
        return [(r["label"], r["recipe"], []) for r in rows]
    if table is not None:
        rows = index.get(f"table{table}")
        if rows is None:
            fail(f"no table '{table}' in {INDEX.relative_to(ROOT)} (valid: 1, 2, 3)")
        return [(" ".join(f"{k}={'null' if v is None else v}" for k, v in r.items() if k != "recipe"), r["recipe"], [])
                for r in rows]
    spec = index["grids"].get(grid)
    if spec is None:
        fail(f"no grid '{grid}' in {INDEX.relative_to(ROOT)} (valid: {', '.join(index['grids'])})")
    return [(f"alpha={a}", spec["recipe"], [*spec["overrides"], f"pgt.alpha={a}", f"run.dir={spec['run_dir']}/alpha{a}"])
            for a in spec["alphas"]]


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description="Reproduce a table (or an alpha grid) of the PGT paper, row by row.")
    what = p.add_mutually_exclusive_group(required=True)
    what.add_argument("--table", help="1, 2 or 3")
    what.add_argument("--grid", help="resnet18 or resnet50 (Figs. 10-11, 50 epochs), cifar10_resnet20 (Fig. 13)")
    what.add_argument("--figure", help="4c (Fig. 4(c): PGT ResNet-50 in 60 epochs against the 100-epoch baseline)")
    p.add_argument("--reading", default="paper", help="paper (default) or code: configs/reading/<reading>.yaml")
    p.add_argument("--impl", help=f"pgt.impl of the PGT rows: {', '.join(PGT_IMPLS)} (default: the reading's)")
    p.add_argument("--gpus", type=int, default=1, help="GPUs per run (python -m torch.distributed.run when > 1)")
    p.add_argument("--data", help="ImageNet folder with train/ and val/ (default: each recipe's data.root)")
    p.add_argument("--runs-root", default=str(RECIPE_RUNS_ROOT), help="where the run folders go (default: runs/paper)")
    p.add_argument("--hook-baselines", action="store_true",
                   help="train the baseline rows with PGT at alpha 1 (the authors' checkpoints say alpha-1.0; their "
                        "hook runs for any nonzero --modify-softmax, timm/models/resnet.py:861), with the reading's "
                        "pgt.impl or --impl; exact at alpha 1 is plain cross-entropy, so it needs authors or official")
    p.add_argument("--step-epochs", type=int, help="train step-schedule rows this many epochs (90: the authors' "
                   "factory adds no cooldown to step, scheduler_factory.py:58-69); run folders get a -<N>ep suffix")
    p.add_argument("--dry-run", action="store_true", help="print each command and what it would do, run nothing")
    p.add_argument("--rows", help="only these rows, 1-based as printed: 1,3,5")
    p.add_argument("--ablation", choices=ablation.ABLATIONS,
                   help="temperature: beside each PGT row (a) its twin (b), the temperature alone (c) and the step "
                        "size alone (d), in <row>-twin, -temperature, -stepsize (docs/what-pgt-is.md)")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides for every row")
    s = p.add_argument_group("SLURM (--launcher slurm: the rows as one job array of scripts/slurm/train.sbatch)")
    s.add_argument("--launcher", choices=("local", "slurm"), default="local",
                   help="local: one row after another here (default); slurm: sbatch --array")
    s.add_argument("--nodes", type=int, default=1, help="nodes per row (default 1)")
    s.add_argument("--cpus-per-task", type=int, help="CPUs per node for each row (sbatch --cpus-per-task)")
    s.add_argument("--partition", help="sbatch --partition")
    s.add_argument("--account", help="sbatch --account")
    s.add_argument("--time", help="time limit per row, sbatch --time (e.g. 24:00:00; requeued tasks continue)")
    s.add_argument("--max-running", type=int, default=4, help="array tasks running at once (%%N; default 4)")
    s.add_argument("--sbatch-arg", action="append", default=[], metavar="ARG", help="more sbatch options: --qos=x")
    args = p.parse_args(argv)
    check_args(args)
    return args


def check_args(args: argparse.Namespace) -> None:
    slurm = args.launcher == "slurm"
    if args.gpus < (0 if slurm else 1):
        fail(f"--gpus must be >= {0 if slurm else 1} (0: CPU jobs, --launcher slurm only), got {args.gpus}")
    for name in ("nodes", "max_running", "cpus_per_task"):
        value = getattr(args, name)
        if value is not None and value < 1:
            fail(f"--{name.replace('_', '-')} must be >= 1, got {value}")
    if not slurm and (args.nodes != 1 or args.partition or args.account or args.time or args.sbatch_arg):
        fail("--nodes, --partition, --account, --time and --sbatch-arg need --launcher slurm")
    bad = [o for o in args.overrides if "=" not in o or o.startswith("-")]
    if bad:
        fail(f"'{bad[0]}' is not a key=value override (options go before the overrides)")
    if args.rows is not None and not all(r.strip().isdigit() and int(r) >= 1 for r in args.rows.split(",")):
        fail(f"--rows: '{args.rows}' is not a list of row numbers like 1,3,5")
    if args.impl is not None and args.impl not in PGT_IMPLS:
        fail(f"--impl: '{args.impl}' is not one of: {', '.join(PGT_IMPLS)}")
    if args.step_epochs is not None and args.step_epochs < 1:
        fail(f"--step-epochs must be >= 1, got {args.step_epochs}")


def variant_overrides(args, recipe: str, overrides: list[str], overlay: Path) -> tuple[list[str], str]:
    """--hook-baselines and --step-epochs as overrides of one row, and the run folder suffix they need."""
    cfg = config.load(ROOT / recipe, overrides, [overlay])
    suffix = ""
    if args.hook_baselines and cfg.pgt.alpha is None:
        impl = args.impl or cfg.pgt.impl
        if impl == "exact":
            fail("--hook-baselines: pgt.impl exact at alpha 1 is plain cross-entropy (Eq. 8); pass --impl authors "
                 "or official, or --reading code")
        overrides = [*overrides, "pgt.alpha=1.0"]
    if args.step_epochs is not None and cfg.sched.name == "step":
        overrides, suffix = [*overrides, f"sched.epochs={args.step_epochs}"], f"-{args.step_epochs}ep"
    return overrides, suffix


def row_settings(args, recipe: str, overrides: list[str]) -> dict:
    """Every setting of one row as its recipe (reading overlay and the row's own overrides) defines it: what the
    trailing overrides are compared with."""
    return compared(config.load(ROOT / recipe, overrides, [config.reading_path(args.reading)]))


def compared(cfg: config.Config) -> dict:
    """Every setting, defining ones as run identity compares them (which image reader, say, is no change)."""
    flat = config.flat_settings(cfg)
    return {**flat, **config.defining_settings(flat)}


def row_defining_keys(overrides: list[str], rows: list[dict]) -> list[str]:
    """The trailing override keys that define a row: run identity says so (config.is_defining), or the rows of
    this table differ in it. run.* never does: reproduce.py names the folders itself."""
    keys = dict.fromkeys(o.partition("=")[0].strip() for o in overrides)
    return [k for k in keys if not k.startswith("run.") and
            (config.is_defining(k) or len({repr(r.get(k)) for r in rows}) > 1)]


def shown(value) -> str:
    """A setting as it reads in a folder name: YAML's words for null and booleans, lists without spaces."""
    if isinstance(value, (list, tuple)):
        return "[" + ",".join(shown(v) for v in value) + "]"
    if value is None or isinstance(value, bool):
        return {None: "null", True: "true", False: "false"}[value]
    return str(value)


def changes(keys: list[str], before: dict, after: dict) -> dict[str, list[str]]:
    """override key -> ["key=value", ...] of the settings it changed in this row's recipe (a section key may
    change several); keys that change nothing here are left out."""
    out = {}
    for key in keys:
        changed = [k for k in after if (k == key or k.startswith(key + ".")) and after[k] != before.get(k)]
        if changed:
            out[key] = [f"{k}={shown(after[k])}" for k in changed]
    return out


def folder_suffix(changed: dict[str, list[str]]) -> str:
    """+key=value... for the changes a row's folder carries; a short stable hash where they are long or hold
    characters a folder name should not (the overrides are then written beside the run, OVERRIDES_FILE)."""
    texts = sorted(t for ts in changed.values() for t in ts)
    if not texts:
        return ""
    plain = "+".join(texts)
    if len(plain) <= 60 and re.fullmatch(r"[A-Za-z0-9._=,+-]+", plain):
        return "+" + plain
    return "+overrides-" + hashlib.sha256("\n".join(texts).encode()).hexdigest()[:8]


def plan_row(args, recipe: str, overrides: list[str], before: dict, defining: list[str], arm: str = "a") -> tuple:
    """(status, run folder, command, {override key: its changes}) of one row, or of its ablation arm `arm`
    (pgt_train/ablation.py: its overrides go last, its folder gets the arm's suffix); the config is resolved here,
    so a broken recipe stops the script before the first run, not hours into the table."""
    overlay = config.reading_path(args.reading)
    overrides, suffix = variant_overrides(args, recipe, [*overrides, *args.overrides], overlay)
    pgt_on = config.load(ROOT / recipe, overrides, [overlay]).pgt.alpha is not None
    if args.impl and pgt_on:
        overrides = [*overrides, f"pgt.impl={args.impl}"]
    if arm != "a":
        row = config.flat_settings(config.load(ROOT / recipe, overrides, [overlay]))
        chosen = next(a for a in ablation.arms(row) if a.letter == arm)
        overrides, suffix = [*overrides, *chosen.overrides], suffix + chosen.suffix
    cfg = config.load(ROOT / recipe, overrides, [overlay])  # an arm the settings refuse: ConfigError
    pgt_on = cfg.pgt.alpha is not None
    changed = changes(defining, before, compared(cfg))
    run_dir = (Path(args.runs_root) / args.reading / (cfg.pgt.impl if pgt_on else "nopgt")
               / Path(cfg.run.dir + suffix + folder_suffix(changed)).relative_to(RECIPE_RUNS_ROOT))
    overrides = [o for o in overrides if not o.startswith("run.dir=")] + [f"run.dir={run_dir}"]
    if args.data:
        overrides.append(f"data.root={args.data}")
    data_root = args.data or cfg.data.root
    if not args.dry_run and cfg.data.loader != "synthetic" and not Path(data_root).is_dir():
        fail(f"data folder not found: {data_root} (pass --data /path/to/imagenet)")
    status = ("skip" if run_finished(run_dir, cfg.sched.epochs) else
              "resume" if (run_dir / "last.pth").is_file() else "start")
    launcher = ([sys.executable, "-m"] if args.gpus == 1 else
                [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={args.gpus}", "-m"])
    cmd = [*launcher, "pgt_train", "--config", os.path.relpath(ROOT / recipe), "--reading", args.reading,
           *overrides, "--resume", "auto"]
    return status, run_dir, cmd, changed


def row_numbers(numbers: list[int]) -> str:
    """1, 3, 5-9"""
    spans: list[list[int]] = []
    for n in numbers:
        if spans and n == spans[-1][1] + 1:
            spans[-1][1] = n
        else:
            spans.append([n, n])
    return ", ".join(str(a) if a == b else f"{a}-{b}" for a, b in spans)


def override_notes(plan: list, total: int) -> list[str]:
    """One line per row-defining trailing override: the rows (as printed) whose recipe it changes."""
    keys = dict.fromkeys(k for _, (*_, changed) in plan for k in changed)
    lines = []
    for key in keys:
        rows = [i for i, (*_, changed) in plan if key in changed]
        values = sorted({t for _, (*_, changed) in plan for t in changed.get(key, [])})
        lines.append(f"reproduce: {', '.join(values)} changes the recipe of row{'s' if len(rows) > 1 else ''} "
                     f"{row_numbers(rows)} of {total}; their run folders are named for it")
    return lines


def write_overrides(run_dir: Path, changed: dict[str, list[str]]) -> None:
    """Beside a run whose folder name carries a hash of its overrides: the overrides themselves."""
    if "+overrides-" in run_dir.name:
        run_dir.mkdir(parents=True, exist_ok=True)
        atomic_write(run_dir / OVERRIDES_FILE, "".join(t + "\n" for ts in changed.values() for t in ts))


def selected(plan: list, rows: str | None) -> list:
    """(row number from 1, row) for --rows (all without it)."""
    numbered = list(enumerate(plan, 1))
    if rows is None:
        return numbered
    wanted = sorted({int(r) for r in rows.split(",")})
    if wanted[-1] > len(plan):
        fail(f"--rows: row {wanted[-1]} does not exist (this one has {len(plan)} rows)")
    return [numbered[i - 1] for i in wanted]


def run_locally(args, plan: list, total: int) -> int:
    for i, (label, status, run_dir, cmd, changed) in plan:
        print(f"[{i}/{total}] {label}: {status} {run_dir}\n    {shlex.join(cmd)}", flush=True)
        if args.dry_run or status == "skip":
            continue
        write_overrides(run_dir, changed)
        rc = subprocess.run(cmd).returncode
        if rc != 0:
            print(f"reproduce: row {i} ({label}) failed with exit code {rc}; stopping. Rerun the same command to "
                  f"resume it (finished rows are skipped).", file=sys.stderr)
            return 1
    return 0


def plan_with_arms(args, label: str, recipe: str, overrides: list[str], before: dict, defining: list[str]) -> list:
    """The row's plan entry and, with --ablation, one per arm (b)-(d) of a PGT row; an arm its settings refuse (no
    twin of pgt.impl authors, say) is left out with one line saying why."""
    plan = [(label, *plan_row(args, recipe, overrides, before, defining))]
    row_cfg = config.load(ROOT / recipe, [*overrides, *args.overrides], [config.reading_path(args.reading)])
    if not args.ablation or before["pgt.alpha"] is None or row_cfg.pgt.alpha is None:
        return plan
    for arm in "bcd":
        try:
            plan.append((f"{label} ({arm}) {ablation.ARM_NAMES[arm]}",
                         *plan_row(args, recipe, overrides, before, defining, arm)))
        except config.ConfigError as e:
            why = str(e).split(" [from ")[0]  # the setting and the reason; the recipe is the row's, printed above
            print(f"reproduce: {label} ({arm}) {ablation.ARM_NAMES[arm]}: left out: {why}", flush=True)
    return plan


def main(argv=None) -> int:
    args = parse_args(argv)
    index = yaml.safe_load(INDEX.read_text())
    rows = rows_of(index, args.table, args.grid, args.figure)
    recipes = [row_settings(args, recipe, overrides) for _, recipe, overrides in rows]
    defining = row_defining_keys(args.overrides, recipes)
    plan = [entry for (label, recipe, overrides), before in zip(rows, recipes)
            for entry in plan_with_arms(args, label, recipe, overrides, before, defining)]
    total, plan = len(plan), selected(plan, args.rows)
    for line in override_notes(plan, total):
        print(line, flush=True)
    return submit_array(args, plan, total) if args.launcher == "slurm" else run_locally(args, plan, total)


# --- --launcher slurm: one job array, one task per row not finished and not already queued -----------------------

def slurm_command(argv: list[str], env: dict | None = None) -> str:
    """stdout of a SLURM client; its one-line error (exit 2) where SLURM is missing or unreachable."""
    try:
        r = subprocess.run(argv, capture_output=True, text=True, timeout=60, env=env)
    except FileNotFoundError:
        fail(f"{argv[0]} not found: --launcher slurm needs the SLURM client commands on PATH")
    except subprocess.TimeoutExpired:
        fail(f"{argv[0]} did not answer within 60 s: is the SLURM controller reachable?")
    if r.returncode != 0:
        fail(f"{shlex.join(argv[:2])} failed: {(r.stderr.strip().splitlines() or ['no message'])[-1]}")
    return r.stdout


def active_tasks() -> set[str]:
    """Job ids (array tasks as <array id>_<index>) that SLURM still has queued or running."""
    out = slurm_command(["squeue", "-h", "-r", "-o", "%i|%T"])
    return {job for job, state in (line.split("|", 1) for line in out.split()) if state in ACTIVE_STATES}


def slurm_status(status: str, run_dir: Path, active: set[str]) -> str:
    """skip, queued as <job> (the run folder's task is still queued or running), or status (to submit)."""
    marker = run_dir / JOB_MARKER
    job = marker.read_text().strip() if status != "skip" and marker.is_file() else ""
    return f"queued as {job}" if job in active else status


def train_args(cmd: list[str]) -> list[str]:
    """train.sbatch's CONFIG [args ...] from a row's local command (train.sbatch adds --resume auto)."""
    start = cmd.index("--config") + 1
    return [str(Path(cmd[start]).resolve()), *cmd[start + 1:-2]]


def sbatch_argv(args, n: int, rows_file: Path, logs: Path) -> list[str]:
    name = f"pgt-{'table' + args.table if args.table else 'grid-' + args.grid if args.grid else 'fig' + args.figure}"
    argv = ["sbatch", "--parsable", f"--array=0-{n - 1}%{args.max_running}", f"--job-name={name}",
            f"--output={logs}/%x-%A_%a.out", f"--nodes={args.nodes}"]
    argv += [f"--gpus-per-node={args.gpus}"] if args.gpus else []
    for option in ("cpus_per_task", "partition", "account", "time"):
        if getattr(args, option) is not None:
            argv.append(f"--{option.replace('_', '-')}={getattr(args, option)}")
    return [*argv, *args.sbatch_arg, str(SBATCH), "--rows", str(rows_file)]


def submit_array(args, plan: list, total: int) -> int:
    active = active_tasks() if not args.dry_run else set()
    todo = []
    for i, (label, status, run_dir, cmd, changed) in plan:
        status = slurm_status(status, run_dir, active)
        task = f" -> task {len(todo)}" if status in ("start", "resume") else ""
        print(f"[{i}/{total}] {label}: {status} {run_dir}{task}\n    {shlex.join(train_args(cmd))}", flush=True)
        if task:
            todo.append((run_dir, train_args(cmd), changed))
    if not todo:
        print("reproduce: nothing to submit (every row finished or queued)")
        return 0
    logs = Path(args.runs_root).resolve() / "slurm"
    rows_file = logs / f"array-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}.rows"  # read by the tasks: kept
    argv = sbatch_argv(args, len(todo), rows_file, logs)
    print(f"{'would submit' if args.dry_run else 'submitting'}: {shlex.join(argv)}", flush=True)
    if args.dry_run:
        return 0
    logs.mkdir(parents=True, exist_ok=True)
    rows_file.write_text("".join(shlex.join(row) + "\n" for _, row, _ in todo))  # line k: task k's arguments
    # sbatch exports this environment to the tasks, with this python's bin folder (pgt-torchrun) first on PATH
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    array = slurm_command(argv, env).strip().split(";")[0]
    for k, (run_dir, _, changed) in enumerate(todo):
        run_dir.mkdir(parents=True, exist_ok=True)
        atomic_write(run_dir / JOB_MARKER, f"{array}_{k}\n")
        write_overrides(run_dir, changed)
    print(f"submitted job array {array}: {len(todo)} task(s), at most {args.max_running} at once; logs in {logs}")
    return 0


def atomic_write(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def _main_with_config_errors() -> int:
    try:
        return main()
    except config.ConfigError as e:
        fail(str(e))


if __name__ == "__main__":
    exit_quietly_on_closed_pipe(_main_with_config_errors)
