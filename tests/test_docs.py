"""README.md and docs/*.md cannot drift from the code.

Every relative link (and #anchor) points at a file (and heading) that exists. Every command quoted in a
fenced shell block still parses: a `pgt-train` line naming a recipe resolves with --print-config, other
`pgt-train` / `pgt-report` lines parse with --help (in-process, fast); `pgt-torchrun` / `torchrun` lines parse
with torchrun's own parser and their pgt_train part as above; `sbatch` lines name an existing batch script and a
recipe that resolves; `docker` lines need the Dockerfile and their pgt-train part resolves; `make` targets exist;
`pip install -e ".[x]"` names existing extras; `scripts/...` lines run with --dry-run where the script has one,
else --help (subprocess, slow). Python blocks compile. Placeholders such as /path/to/imagenet are fine:
--print-config resolves the config without touching data.root.
"""
from __future__ import annotations

import contextlib
import importlib
import io
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
SHELL_LANGS = {"bash", "sh", "shell", "console"}
FENCE = re.compile(r"^```([\w+-]*)[^\n]*\n(.*?)^```", re.S | re.M)
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")
SEPARATORS = {"|", "||", "&&", ";", "&", ">", ">>", "2>", "<"}
ENV_ASSIGN = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*=")


def rel(page: Path) -> str:
    return str(page.relative_to(ROOT))


def blocks(text: str) -> list[tuple[str, str]]:
    """(language, body) of every fenced block."""
    return [(m.group(1).lower(), m.group(2)) for m in FENCE.finditer(text)]


def prose(text: str) -> str:
    """The text outside fenced blocks and inline code spans (where a link is a link)."""
    return re.sub(r"`[^`\n]*`", "", FENCE.sub("", text))


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"[`*_]|\[([^\]]*)\]\([^)]*\)", r"\1", heading.strip().lower())
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def anchors(page: Path) -> set[str]:
    seen: dict[str, int] = {}
    out = set()
    for line in FENCE.sub("", page.read_text(encoding="utf-8")).splitlines():
        m = re.match(r"^#{1,6}\s+(.*?)\s*#*\s*$", line)
        if m:
            base = slug(m.group(1))
            n = seen.get(base, 0)
            seen[base] = n + 1
            out.add(base if n == 0 else f"{base}-{n}")
    return out


def links() -> list[tuple[str, str]]:
    return [(rel(page), target) for page in PAGES for target in LINK.findall(prose(page.read_text(encoding="utf-8")))
            if not re.match(r"^[a-z][a-z0-9+.-]*:", target)]  # http:, https:, mailto: are not checked here


@pytest.mark.parametrize("page, target", links())
def test_relative_link_resolves(page, target):
    path, _, anchor = target.partition("#")
    dest = (ROOT / page).parent / path if path else ROOT / page
    assert dest.exists(), f"{page}: link {target!r}: {dest.relative_to(ROOT)} does not exist"
    if anchor:
        assert dest.suffix == ".md", f"{page}: link {target!r}: an anchor into a non-markdown file"
        assert anchor in anchors(dest), f"{page}: link {target!r}: no heading with anchor #{anchor} in {path or page}"


def test_pages_start_with_what_they_answer():
    """Each docs page opens with a title and a sentence saying what it answers."""
    for page in PAGES[1:]:
        lines = [ln for ln in page.read_text(encoding="utf-8").splitlines() if ln.strip()]
        assert lines[0].startswith("# "), f"{rel(page)}: first line is not a title"
        assert lines[1][:1].isupper() or lines[1][:1] == "`", f"{rel(page)}: no opening sentence after the title"


def test_readme_quickstart_is_two_commands():
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    section = text.split("## Quickstart", 1)[1].split("\n## ", 1)[0]
    shell = [body for lang, body in blocks(section) if lang in SHELL_LANGS]
    assert len(shell) == 1, "README's Quickstart has one shell block"
    lines = [ln for ln in shell[0].splitlines() if ln.strip() and not ln.lstrip().startswith("#")]
    assert [ln.split()[:2] for ln in lines] == [["make", "demo"], ["make", "test"]]


def shell_lines() -> list[tuple[str, str]]:
    """(page, command) for every command in a fenced shell block; continuation lines joined."""
    out = []
    for page in PAGES:
        for lang, body in blocks(page.read_text(encoding="utf-8")):
            if lang in SHELL_LANGS:
                joined = re.sub(r"\\\n\s*", " ", body)
                out += [(rel(page), line.strip()) for line in joined.splitlines()
                        if line.strip() and not line.lstrip().startswith("#")]
    return out


def segments(command: str) -> list[list[str]]:
    """The simple commands of one line (split at |, &&, ;), comments and leading VAR=value dropped."""
    lexer = shlex.shlex(command, posix=True, punctuation_chars=True)
    lexer.whitespace_split, lexer.commenters = True, "#"
    out, current = [], []
    for token in lexer:
        if token in SEPARATORS:
            out.append(current)
            current = []
        else:
            current.append(token)
    out.append(current)
    stripped = []
    for tokens in out:
        while tokens and ENV_ASSIGN.match(tokens[0]):
            tokens = tokens[1:]
        if tokens:
            stripped.append(tokens)
    return stripped


def pyproject() -> dict:
    """pyproject.toml's [project] table (tomllib is Python 3.11+; pyproject allows 3.10, where these checks skip)."""
    tomllib = pytest.importorskip("tomllib", reason="reading pyproject.toml needs Python 3.11's tomllib")
    return tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]


def console_script(name: str):
    """The function pyproject.toml's [project.scripts] names for a console script."""
    target = pyproject()["scripts"][name]
    module, _, func = target.partition(":")
    return getattr(importlib.import_module(module), func)


def exit_code(func, argv: list[str]) -> tuple[int, str]:
    """Run a CLI main in-process; its exit status and what it printed."""
    out = io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(out):
        try:
            code = func(argv)
        except SystemExit as e:
            code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    return code or 0, out.getvalue()


def check_pgt_train(args: list[str], *, where: str) -> None:
    """A recipe resolves with --print-config (data.root is not read); anything else parses with --help."""
    extra = "--print-config" if "--config" in args else "--help"
    code, out = exit_code(console_script("pgt-train"), args + [extra])
    assert code == 0, f"{where}: `pgt-train {shlex.join(args)} {extra}` exited {code}: {out.strip()[-400:]}"


def check_torchrun(args: list[str], *, where: str) -> None:
    from torch.distributed.run import get_args_parser

    assert "-m" in args and args[args.index("-m") + 1] == "pgt_train", f"{where}: torchrun line runs no `-m pgt_train`"
    i = args.index("-m")
    try:
        get_args_parser().parse_args(args[:i] + ["-m", "pgt_train"])
    except SystemExit as e:
        pytest.fail(f"{where}: torchrun does not accept {shlex.join(args[:i])} (exit {e.code})")
    check_pgt_train(args[i + 2:], where=where)


def check_docker(args: list[str], *, where: str) -> None:
    assert (ROOT / "Dockerfile").is_file(), f"{where}: no Dockerfile"
    if args[:1] != ["run"] or "pgt-train" not in args:
        return
    image = len(args) - 1 - args[::-1].index("pgt-train")  # the image tag; what follows goes to its entry point
    entry = args[args.index("--entrypoint") + 1] if "--entrypoint" in args else "pgt-train"
    rest = args[image + 1:]
    check_torchrun(rest, where=where) if entry == "pgt-torchrun" else check_pgt_train(rest, where=where)


def check_sbatch(args: list[str], *, where: str) -> None:
    scripts = [a for a in args if a.endswith(".sbatch")]
    assert scripts and (ROOT / scripts[0]).is_file(), f"{where}: names no existing batch script"
    rest = args[args.index(scripts[0]) + 1:]  # train.sbatch CONFIG [key=value ...], as its header says
    if rest:
        check_pgt_train(["--config", *rest], where=where)


def check_make(args: list[str], *, where: str) -> None:
    makefile = (ROOT / "Makefile").read_text(encoding="utf-8")
    for target in (a for a in args if not a.startswith("-") and "=" not in a):
        assert re.search(rf"^{re.escape(target)}:", makefile, re.M), f"{where}: Makefile has no target {target}"


def check_pip(args: list[str], *, where: str) -> None:
    extras = pyproject()["optional-dependencies"]
    for arg in args:
        m = re.fullmatch(r"\.\[([\w,-]+)\]", arg)
        for extra in (m.group(1).split(",") if m else []):
            assert extra in extras, f"{where}: pyproject.toml has no extra {extra!r}"


def script_of(tokens: list[str]) -> tuple[str, list[str]] | None:
    """(script path, its arguments) for `scripts/x ...` or `python scripts/x.py ...`."""
    if tokens[0].startswith("scripts/"):
        return tokens[0], tokens[1:]
    if re.fullmatch(r"(\S*/)?python3?", tokens[0]) and len(tokens) > 1 and tokens[1].startswith("scripts/"):
        return tokens[1], tokens[2:]
    return None


def is_pgt_train(tokens: list[str]) -> bool:
    return tokens[0] == "pgt-train" or (re.fullmatch(r"(\S*/)?python3?", tokens[0]) is not None
                                         and tokens[1:3] == ["-m", "pgt_train"])


def check_fast(tokens: list[str], *, where: str) -> None:
    prog = tokens[0]
    if is_pgt_train(tokens):
        check_pgt_train(tokens[1:] if prog == "pgt-train" else tokens[3:], where=where)
    elif prog == "pgt-report":
        code, out = exit_code(console_script("pgt-report"), tokens[1:] + ["--help"])
        assert code == 0, f"{where}: `{shlex.join(tokens)} --help` exited {code}: {out.strip()[-400:]}"
    elif prog in ("pgt-torchrun", "torchrun"):
        check_torchrun(tokens[1:], where=where)
    elif prog == "docker":
        check_docker(tokens[1:], where=where)
    elif prog == "sbatch":
        check_sbatch(tokens[1:], where=where)
    elif prog == "make":
        check_make(tokens[1:], where=where)
    elif prog == "pip" and tokens[1:2] == ["install"]:
        check_pip(tokens[2:], where=where)
    elif script_of(tokens):
        path = script_of(tokens)[0]
        assert (ROOT / path).is_file(), f"{where}: {path} does not exist"


COMMANDS = [(page, line, tokens) for page, line in shell_lines() for tokens in segments(line)]


def test_docs_quote_commands():
    """The check below is not vacuous: the docs quote each kind of command it knows."""
    progs = {tokens[0] for _, _, tokens in COMMANDS}
    assert {"pgt-train", "pgt-torchrun", "pgt-report", "sbatch", "docker", "make"} <= progs
    assert any(script_of(tokens) for _, _, tokens in COMMANDS)


def test_quoted_commands_parse():
    """One in-process pass over every quoted command (each pgt-train parse takes milliseconds)."""
    for page, line, tokens in COMMANDS:
        check_fast(tokens, where=f"{page}: {line[:120]}")


def test_check_catches_drift():
    """A renamed key, a missing recipe or an unknown torchrun flag would be caught."""
    for bad in (["pgt-train", "--config", "configs/resnet50_cosine_pgt.yaml", "pgt.alpah=0.3"],
                ["pgt-train", "--config", "configs/no_such_recipe.yaml"],
                ["pgt-torchrun", "--nprocs=4", "-m", "pgt_train", "--config", "configs/demo.yaml"],
                ["sbatch", "scripts/slurm/no_such.sbatch", "configs/demo.yaml"],
                ["make", "no-such-target"]):
        with pytest.raises(pytest.fail.Exception if bad[0] == "pgt-torchrun" else AssertionError):
            check_fast(bad, where="drift")


def script_commands() -> list[tuple[str, list[str]]]:
    seen, out = set(), []
    for page, _, tokens in COMMANDS:
        found = script_of(tokens)
        if found and found[0].endswith(".py") and (found[0], tuple(found[1])) not in seen:
            seen.add((found[0], tuple(found[1])))
            out.append((page, [found[0], *found[1]]))
    return out


@pytest.mark.slow
@pytest.mark.parametrize("page, argv", script_commands(), ids=lambda v: v if isinstance(v, str) else shlex.join(v))
def test_quoted_script_runs(page, argv):
    """`python scripts/x.py ...` as quoted: with --dry-run where the script has one, else --help; exit 0."""
    source = (ROOT / argv[0]).read_text(encoding="utf-8")
    extra = [] if {"--dry-run", "--help"} & set(argv) else ["--dry-run" if '"--dry-run"' in source else "--help"]
    done = subprocess.run([sys.executable, *argv, *extra], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, f"{page}: `python {shlex.join(argv + extra)}` exited {done.returncode}: " \
                                 f"{(done.stderr or done.stdout).strip()[-400:]}"


@pytest.mark.slow
def test_quoted_shell_scripts_have_valid_syntax():
    """`scripts/x.sh` and the batch script of an `sbatch` line: bash -n (they need a GPU or SLURM to run)."""
    named = {(page, found[0]) for page, _, tokens in COMMANDS if (found := script_of(tokens))}
    named |= {(page, a) for page, _, tokens in COMMANDS if tokens[0] == "sbatch" for a in tokens if a.endswith(".sbatch")}
    shell = sorted((page, path) for page, path in named if path.endswith((".sh", ".sbatch")))
    assert shell, "the docs quote no shell script"
    for page, path in shell:
        done = subprocess.run(["bash", "-n", str(ROOT / path)], capture_output=True, text=True)
        assert done.returncode == 0, f"{page}: {path}: {done.stderr.strip()}"


def test_python_blocks_compile():
    for page in PAGES:
        for lang, body in blocks(page.read_text(encoding="utf-8")):
            if lang == "python":
                compile(body, f"{rel(page)} (python block)", "exec")


def test_every_config_key_is_in_the_configuration_reference():
    """A key added to config.py without a row in docs/configuration.md fails here (data.demo.* rows as one)."""
    from pgt_train import config
    text = (ROOT / "docs" / "configuration.md").read_text()
    keys = [k for k in config.flat_settings(config.Config()) if not k.startswith("data.demo.")]
    assert [k for k in keys if f"`{k}`" not in text] == []
    assert "`data.demo.*`" in text
