"""scripts/proxy_study.py --recipes: runs only the named recipes; an unknown name is one line, exit 2."""
import pytest

from tests.helpers import run_python


def proxy_study(*args):
    return run_python("scripts/proxy_study.py", "--dry-run", *args)


@pytest.mark.slow
def test_recipes_filter_runs_only_the_named_recipes(tmp_path):
    r = proxy_study("--recipes", "resnet18_nobn_lr025", "resnet18_nobn_lr025_pgt", "--seeds", "0",
                    "--runs-root", str(tmp_path))
    assert r.returncode == 0, r.stderr
    started = sorted(line.split(" seed ")[0] for line in r.stdout.splitlines() if ": run " in line)
    assert started == ["resnet18_nobn_lr025", "resnet18_nobn_lr025_pgt"]
    assert "optim.lr" not in r.stdout  # the LR comes from the recipe, not from an override


@pytest.mark.slow
def test_unknown_recipe_is_one_line_and_runs_nothing(tmp_path):
    r = proxy_study("--recipes", "resnet18_nobn", "resnet99", "--runs-root", str(tmp_path))
    assert r.returncode == 2 and r.stdout == ""
    assert r.stderr.count("\n") == 1 and "no recipe resnet99" in r.stderr
