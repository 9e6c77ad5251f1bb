"""The paper recipes: every config loads, and every row of Tables 1-3 resolves to the setup of Section 5.1
plus that row's changes, read from the paper's figures in pgt_train/reference/paper_results.yaml."""
from pathlib import Path

import pytest
import yaml

from pgt_train import config

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "configs"
REFERENCE = ROOT / "pgt_train" / "reference" / "paper_results.yaml"
PAPER = yaml.safe_load(REFERENCE.read_text())
SETUP = PAPER["setup"]
INDEX = yaml.safe_load((CONFIGS / "paper" / "index.yaml").read_text())
KEYS = {"table1": ("model", "sched", "alpha"), "table2": ("batch", "method", "alpha"), "table3": ("row",)}
CLIP_MODE = {"baseline": "none", "pgt": "none", "gc": "norm", "agc": "agc", "gc+pgt": "norm", "agc+pgt": "agc"}
# (table, paper row, index entry), in the paper's order; the pairing is checked in test_index_matches_paper
ROWS = [(t, p, e) for t in KEYS for p, e in zip(PAPER[t], INDEX[t])]
RECIPES = sorted(CONFIGS.glob("paper/table*/*.yaml"))


def rel(path: Path) -> str:
    return path.relative_to(ROOT).as_posix()


def test_every_config_loads():
    files = [p for p in CONFIGS.rglob("*.yaml")
             if rel(p) not in ("configs/demo.yaml", "configs/paper/index.yaml")
             and "proxy" not in p.parts and "reading" not in p.parts]  # readings are overlays, tested below
    assert len(files) > 40
    for path in files:
        config.load(path)


def test_top_level_entry_points_only_point_at_paper_recipes():
    # one source of truth: configs/<name>.yaml adds nothing to the paper recipe it inherits
    for path in CONFIGS.glob("*.yaml"):
        if path.name == "demo.yaml":
            continue
        data = yaml.safe_load(path.read_text())
        assert list(data) == ["base"] and isinstance(data["base"], str), path.name
        assert (CONFIGS / data["base"]).resolve().is_relative_to(CONFIGS / "paper"), path.name


def test_index_matches_paper():
    # Linked by row number only: the recipe alone holds a row's settings (test_row_recipe checks them against
    # the paper's row labels), paper_results.yaml the numbers.
    for table in KEYS:
        rows = list(range(1, len(PAPER[table]) + 1))
        assert [r["row"] for r in PAPER[table]] == rows, table
        assert [e["row"] for e in INDEX[table]] == rows, table  # exactly one entry per row, same order
        for entry in INDEX[table]:
            assert set(entry) == {"row", "recipe"}, entry


def test_every_recipe_is_indexed_and_run_dirs_are_unique():
    indexed = {e["recipe"] for t in KEYS for e in INDEX[t]}
    assert indexed == {rel(p) for p in RECIPES}
    run_dirs = [config.load(p).run.dir for p in RECIPES]
    assert len(set(run_dirs)) == len(run_dirs)
    assert all(d.startswith("runs/paper/") for d in run_dirs)


def test_rows_sharing_a_recipe_report_the_same_numbers():
    # Table 3 rows 1, 3, 7 reuse Table 1's ResNet-50 runs; that is only right if the paper reports them identically
    seen = {}
    for _, paper, entry in ROWS:
        seen.setdefault(entry["recipe"], []).append((paper["train"], paper["test"]))
    for recipe, results in seen.items():
        assert len(set(results)) == 1, recipe


def check_setup(cfg, batch: int) -> None:
    assert cfg.data.batch_size == batch and cfg.data.accum_steps == 1
    assert cfg.optim.lr == pytest.approx(SETUP["peak_lr"] * batch / SETUP["global_batch"])
    assert cfg.optim.momentum == SETUP["momentum"]
    assert cfg.optim.nesterov is SETUP["nesterov"]
    assert cfg.optim.weight_decay == SETUP["weight_decay"]
    assert cfg.optim.decay_norm_and_bias is False
    assert cfg.sched.epochs == SETUP["epochs"]
    assert cfg.sched.warmup_epochs == SETUP["warmup_epochs"]
    assert cfg.sched.warmup_lr == SETUP["warmup_lr"]
    if cfg.sched.name == "step":
        assert list(cfg.sched.milestones) == SETUP["step_schedule"]["milestones"]
        assert cfg.sched.gamma == SETUP["step_schedule"]["gamma"]
    assert cfg.amp.dtype == "fp16"  # "mixed precision"
    assert cfg.model.num_classes == 1000 and cfg.data.img_size == 224 and cfg.data.loader == "torchvision"
    assert cfg.run.dir.startswith("runs/paper/")


@pytest.mark.parametrize("table,paper,entry", ROWS, ids=[f"{t}-{e['recipe'].split('/')[-1]}" for t, _, e in ROWS])
def test_row_recipe(table, paper, entry):
    cfg = config.load(ROOT / entry["recipe"])
    assert cfg.pgt.alpha == paper["alpha"]
    if table == "table1":
        check_setup(cfg, SETUP["global_batch"])
        assert (cfg.model.name, cfg.sched.name) == (paper["model"], paper["sched"])
        assert (cfg.model.norm, cfg.loss.label_smoothing, cfg.clip.mode) == ("bn", 0.0, "none")
    elif table == "table2":
        check_setup(cfg, paper["batch"])
        assert (cfg.model.name, cfg.model.norm, cfg.sched.name) == ("resnet18", "none", "cosine")
        assert cfg.clip.mode == CLIP_MODE[paper["method"]]
        assert (cfg.pgt.alpha is not None) == ("pgt" in paper["method"])
        assert cfg.loss.label_smoothing == 0.0
    else:
        check_setup(cfg, SETUP["global_batch"])
        assert (cfg.model.name, cfg.model.norm, cfg.sched.name) == ("resnet50", "bn", paper["sched"])
        assert cfg.loss.label_smoothing == (0.1 if paper["ls"] else 0.0)
        assert cfg.clip.mode == "none"


@pytest.mark.parametrize("name", ["resnet18", "resnet50"])
def test_grid(name):
    spec = INDEX["grids"][name]
    alphas = spec["alphas"]
    assert alphas == sorted(set(alphas)) and all(0 < a <= 1 for a in alphas) and 1.0 in alphas
    assert spec["run_dir"].startswith("runs/paper/")
    for alpha in alphas:
        cfg = config.load(ROOT / spec["recipe"], [*spec["overrides"], f"pgt.alpha={alpha}"])
        assert cfg.model.name == name and cfg.sched.epochs == 50 and cfg.pgt.alpha == alpha
        assert cfg.sched.name == "cosine" and cfg.sched.warmup_epochs == SETUP["warmup_epochs"]


# ---------------------------------------------------------------------------------------------
# The two readings (configs/reading/): overlays any recipe takes


def leaf_lines(path: Path) -> dict[str, str]:
    """dotted key -> the key's line plus the comment lines just above it (where the source is named)."""
    out, comments, section = {}, [], None
    for line in path.read_text().splitlines():
        if line.lstrip().startswith("#"):
            comments.append(line)
        elif line and not line.startswith(" ") and line.rstrip().endswith(":"):
            section, comments = line.rstrip()[:-1], []
        elif line.strip():
            out[f"{section}.{line.split(':')[0].strip()}"] = "\n".join([*comments, line])
            comments = []
    return out


def changed(a: config.Config, b: config.Config) -> set[str]:
    return {k for k, v in config.flatten(config.to_dict(a)).items() if config.flatten(config.to_dict(b))[k] != v}


@pytest.mark.parametrize("recipe", RECIPES, ids=lambda p: p.stem)
def test_paper_reading_is_every_recipe_and_code_reading_changes_only_its_keys(recipe):
    plain = config.load(recipe)
    assert config.load(recipe, overlays=[config.reading_path("paper")]) == plain  # today's recipes are the paper's
    code = config.load(recipe, overlays=[config.reading_path("code")])
    assert changed(code, plain) <= set(leaf_lines(CONFIGS / "reading" / "code.yaml"))
    assert code.pgt.impl == "authors" and code.optim.lr == 0.1 and code.sched.update == "epoch"


def test_each_reading_key_names_its_source():
    paper = leaf_lines(CONFIGS / "reading" / "paper.yaml")
    code = leaf_lines(CONFIGS / "reading" / "code.yaml")
    assert set(code) == set(paper) | {"optim.lr"}  # optim.lr: the recipe's own under the paper reading
    for key, text in paper.items():
        assert "Sec. " in text or "paper silent" in text, key
    for key, text in code.items():
        assert any(f"{f}:" in text for f in ("README.md", "train.py", "parser.py", "resnet.py", "_lr.py",
                                            "scheduler_factory.py")), key


def test_cli_reading_overlays_the_recipe_and_overrides_still_win(capsys):
    from pgt_train import cli
    recipe = str(CONFIGS / "paper" / "table1" / "resnet18_cosine_pgt0.25.yaml")
    assert cli.main(["--config", recipe, "--reading", "code", "optim.lr=0.2", "--print-config"]) == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed["pgt"]["impl"] == "authors" and printed["sched"]["cooldown_epochs"] == 10
    assert printed["optim"]["lr"] == 0.2  # the override, not the reading's 0.1
    assert cli.main(["--config", recipe, "--reading", "words", "--print-config"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--reading: 'words' is not one of: paper, code" in err


def test_figure_recipes():
    # Fig. 4(c): PGT in 60 epochs against Table 1 row 3's 100-epoch baseline; Fig. 13: ResNet-20, CIFAR-10, 360
    (pgt, baseline) = INDEX["figures"]["fig4c"]
    fast, base = config.load(ROOT / pgt["recipe"]), config.load(ROOT / baseline["recipe"])
    assert baseline["recipe"] == INDEX["table1"][2]["recipe"]  # the same run as Table 1 row 3
    assert (fast.model.name, fast.sched.name, fast.sched.epochs, fast.pgt.alpha) == ("resnet50", "cosine", 60, 0.3)
    assert base.sched.epochs == 100 and base.pgt.alpha is None
    assert config.diff_defining(fast, base, ignore=("pgt.alpha", "pgt.impl", "sched.epochs")) == []
    spec = INDEX["grids"]["cifar10_resnet20"]
    assert 1.0 in spec["alphas"] and spec["alphas"] == sorted(set(spec["alphas"]))
    cifar = config.load(ROOT / spec["recipe"])
    assert (cifar.model.name, cifar.model.num_classes, cifar.sched.epochs) == ("resnet20", 10, 360)
    assert (cifar.data.img_size, cifar.data.val_resize, cifar.data.train_crop) == (32, 32, "pad_crop")
    assert cifar.pgt.alpha is None and cifar.run.dir.startswith("runs/paper/")


@pytest.mark.slow
def test_cifar_to_folder(tmp_path):
    """scripts/cifar_to_folder.py: one-line errors, nothing overwritten; what it writes is the layout Fig. 13 reads."""
    import importlib.util

    from PIL import Image

    from pgt_train.data.folder import build_datasets
    from tests.helpers import run_python
    script = ROOT / "scripts" / "cifar_to_folder.py"
    r = run_python(script, "--cifar", str(tmp_path / "none"), "--out", str(tmp_path / "out"), timeout=60)
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "cifar-10-batches-py" in r.stderr
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "mine.txt").write_text("keep")
    r = run_python(script, "--cifar", str(tmp_path), "--out", str(tmp_path / "taken"), timeout=60)
    assert r.returncode == 2 and "nothing is overwritten" in r.stderr
    assert (tmp_path / "taken" / "mine.txt").read_text() == "keep"
    spec = importlib.util.spec_from_file_location("cifar_to_folder", script)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    images = [(Image.new("RGB", (32, 32), (40 * i, 0, 0)), i % 2) for i in range(6)]  # real 32 px images
    for split in ("train", "val"):
        assert module.write_split(images, ["airplane", "automobile"], tmp_path / "cifar" / split) == 6
    train, val = build_datasets(str(tmp_path / "cifar"), num_classes=2, img_size=32, val_resize=32,
                                crop_scale=(0.08, 1.0), crop_ratio=(0.75, 4 / 3), seed=0, train_crop="pad_crop")
    assert len(train) == len(val) == 6 and train.classes == ["airplane", "automobile"]
