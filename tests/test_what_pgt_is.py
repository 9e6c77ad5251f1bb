"""docs/what-pgt-is.md's table of effective LR and temperature per paper row is what the recipes give.

Regenerate the table with `python tests/test_what_pgt_is.py` and paste it between the page's markers.
"""
from pathlib import Path

import yaml

from pgt_train import config

ROOT = Path(__file__).resolve().parents[1]
PAGE = ROOT / "docs" / "what-pgt-is.md"
BEGIN, END = "<!-- effective-table: begin -->", "<!-- effective-table: end -->"


def effective_table() -> str:
    """One line per PGT row of Tables 1-3 (paper reading, the recipe as it is): α, the twin's temperature 1/α,
    and the LRs and weight decay the twin trains at (LR / α, wd · α)."""
    index = yaml.safe_load((ROOT / "configs" / "paper" / "index.yaml").read_text())
    lines = ["| row | recipe | α | temperature 1/α | peak LR | twin's peak LR | twin's warmup start | "
             "twin's floor | wd | twin's wd |", "|---|---|---|---|---|---|---|---|---|---|"]
    for table in (1, 2, 3):
        for entry in index[f"table{table}"]:
            cfg = config.load(ROOT / entry["recipe"])
            a = cfg.pgt.alpha
            if a is None:
                continue
            lines.append(f"| T{table}#{entry['row']} | {Path(entry['recipe']).stem} | {a:g} | {1 / a:.4g} | "
                         f"{cfg.optim.lr:g} | {cfg.optim.lr / a:.4g} | {cfg.sched.warmup_lr / a:.4g} | "
                         f"{cfg.sched.min_lr / a:.4g} | {cfg.optim.weight_decay:g} | "
                         f"{cfg.optim.weight_decay * a:.4g} |")
    return "\n".join(lines)


def test_effective_table_matches_the_recipes():
    text = PAGE.read_text()
    assert BEGIN in text and END in text, f"{PAGE} lost its table markers"
    shown = text.split(BEGIN, 1)[1].split(END, 1)[0].strip()
    assert shown == effective_table(), "the table differs from the recipes: run python tests/test_what_pgt_is.py"


if __name__ == "__main__":
    print(effective_table())
