"""pgt-report: the paper's tables and figures from finished run folders.

    pgt-report RUN_DIR... [--out DIR] [--table 1|2|3] [--configs DIR]

A RUN_DIR is a run folder (config.yaml + summary.csv, as pgt-train writes them) or a folder above run folders
(`pgt-report runs/paper/table1`). What makes a run is config.defining_settings, the definition resume enforces:
- runs equal in every defining setting but the seed form one group: mean ± sample std over its distinct seeds (n);
  a second run of a seed already in the group is a duplicate, counted once and named in the report;
- a group stands beside a row of the paper's Tables 1-3 only if it equals that row's recipe (configs/paper/index.yaml)
  on every defining setting but seed and pgt.impl, under one reading (configs/reading/<reading>.yaml over the
  recipe); any other group is listed as not comparable, with the settings that differ from the nearest row;
- a PGT group's baseline is the group with PGT off (or α = 1) equal to it in every defining setting but α and impl.
Writes DIR/report.md, DIR/report.csv (one row per group) and the PNG figures. The figures need matplotlib
(pip install "pgt-train[report]"); without it the tables are still written and one line says what to install.
Bad input: one line on stderr, exit 2.

One concern per module; imports flow down this list, never up (figures is imported by cli only, lazily):
    model    the data model: Run, Group, Plot, the settings runs may differ in, and how settings are named
    runs     reading run folders (config.yaml, summary.csv) and grouping them by seed
    paper    the paper's rows (paper_results.yaml, the recipes of configs/paper/index.yaml) and matching groups
    stats    final values, means over seeds, differences and their standard errors
    rows     one dict per group: report.csv's columns
    tables   report.md and report.csv from those dicts
    figures  the PNG figures (matplotlib, the `report` extra)
    cli      the command line: `pgt-report`, `python -m pgt_train.report`
"""
