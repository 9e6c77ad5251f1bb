"""Hostile recipes and files as a user (or an attacker) hands them over: alias bombs, FIFOs, devices, deep nesting,
duplicate keys, oversized files. Each ends with one ConfigError line (exit 2) within seconds, never a hang."""
import os
import socket
import subprocess
import sys
import threading

import pytest

from pgt_train import config
from pgt_train.config import ConfigError
from tests.helpers import REPO, python_env

SYNTH = ["data.loader=synthetic"]
DEADLINE_S = 20  # each in-process load must end well within this (the hostile cases hung or ran out of memory)


def load_within(path, overrides=(), seconds=DEADLINE_S):
    """config.load in a daemon thread: returns what it returned or raised, or fails the test if it is still
    running after `seconds` (the thread is left blocked; a daemon thread does not keep pytest alive)."""
    result = {}

    def target():
        try:
            result["value"] = config.load(path, list(overrides))
        except BaseException as e:  # noqa: BLE001  (handed to the test thread)
            result["error"] = e
    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    thread.join(seconds)
    if thread.is_alive():
        pytest.fail(f"config.load({path}) still running after {seconds} s")
    if "error" in result:
        raise result["error"]
    return result["value"]


def refused(path, overrides=(), match=""):
    with pytest.raises(ConfigError) as err:
        load_within(path, overrides)
    message = str(err.value)
    assert match in message and "\n" not in message, message
    return message


def bomb_lines(levels=25) -> list[str]:
    """A few hundred bytes that, merged with themselves, expand to 2^levels leaves."""
    lines = ["a0: &a0 {x: 1, y: 2}"]
    lines += [f"a{i}: &a{i} {{p: *a{i - 1}, q: *a{i - 1}}}" for i in range(1, levels)]
    return lines


def alias_bomb(tmp_path, levels=25):
    """The issue's case: the bomb in a base and again in the child, so the base merge walks both trees."""
    (tmp_path / "bomb_base.yaml").write_text("\n".join(bomb_lines(levels)) + "\n")
    child = tmp_path / "bomb.yaml"
    child.write_text("\n".join(["base: bomb_base.yaml", *bomb_lines(levels)]) + "\n")
    return child


def test_alias_bomb_through_base_is_refused(tmp_path):
    # 18 levels in-process: were aliases let through, the merge would still end (in seconds, not hours), and the
    # full 25-level bomb is run by the CLI test below, in a subprocess with a memory limit and a timeout
    message = refused(alias_bomb(tmp_path, levels=18), match="aliases (*name) are not allowed")
    assert "bomb.yaml:3:" in message  # file and line of the first alias (a1's *a0; the child is read first)


def test_an_alias_is_refused_an_anchor_alone_is_fine(tmp_path):
    shared = tmp_path / "alias.yaml"
    shared.write_text("data: {loader: synthetic}\noptim: {lr: &lr 0.2}\nsched: {warmup_lr: *lr}\n")
    assert "alias.yaml:3:" in refused(shared, match="aliases")
    anchored = tmp_path / "anchor.yaml"
    anchored.write_text("data: {loader: synthetic}\noptim: {lr: &lr 0.2}\n")
    assert load_within(anchored).optim.lr == 0.2
    refused(None, SYNTH + ["optim.lr=*lr"], match="override optim.lr: aliases")


def test_nesting_past_the_limit(tmp_path):
    deep = tmp_path / "deep.yaml"
    deep.write_text("data: {loader: synthetic}\nseed: " + "[" * 5000 + "]" * 5000 + "\n")
    assert "deep.yaml:2:" in refused(deep, match=f"nested deeper than {config.MAX_YAML_DEPTH} levels")
    refused(None, SYNTH + ["seed=" + "[" * 5000 + "]" * 5000], match="override seed: nested deeper")
    block = tmp_path / "block.yaml"  # block style: a mapping 40 levels deep
    block.write_text("".join(f"{'  ' * i}k{i}:\n" for i in range(40)) + "  " * 40 + "v: 1\n")
    refused(block, match="nested deeper")


@pytest.mark.parametrize("text, line, key", [
    ("data: {loader: synthetic}\nseed: 1\nseed: 2\n", 3, "seed"),
    ("data:\n  loader: synthetic\n  batch_size: 8\n  batch_size: 16\n", 4, "batch_size"),
    ("data: {loader: synthetic, loader: torchvision}\n", 1, "loader"),
])
def test_duplicate_keys(tmp_path, text, line, key):
    path = tmp_path / "dup.yaml"
    path.write_text(text)
    refused(path, match=f"dup.yaml:{line}: duplicate key '{key}' (first given on line")


def test_fifo_socket_folder_and_devices_are_not_read(tmp_path):
    fifo = tmp_path / "fifo.yaml"
    os.mkfifo(fifo)  # opening it for reading blocks until a writer comes: never
    refused(fifo, match="fifo.yaml: is a FIFO, not a YAML file")
    with socket.socket(socket.AF_UNIX) as sock:
        sock.bind(str(tmp_path / "sock.yaml"))
        refused(tmp_path / "sock.yaml", match="is a socket")
    refused(tmp_path, match="is a folder")
    child = tmp_path / "child.yaml"
    for base, kind in ((fifo, "a FIFO"), ("/dev/zero", "a character device"), ("/dev/urandom", "a character device")):
        child.write_text(f"base: {base}\n")
        message = refused(child, match=f"is {kind}, not a YAML file")
        assert f"(named in `base:` of {child})" in message
    link = tmp_path / "link.yaml"
    link.symlink_to("/dev/zero")
    refused(link, match="is a character device")


def test_dev_null_is_an_empty_recipe(tmp_path):
    assert load_within("/dev/null", SYNTH).data.loader == "synthetic"
    child = tmp_path / "child.yaml"
    child.write_text("base: /dev/null\ndata: {loader: synthetic}\n")
    assert load_within(child).data.loader == "synthetic"


def test_size_limits(tmp_path):
    big = tmp_path / "big.yaml"
    big.write_text("data: {loader: synthetic}\n" + "# padding\n" * (config.MAX_YAML_BYTES // 10 + 1))
    refused(big, match="KiB a recipe may have")
    # a base: diamond: each level lists the next one 4 times, 5 levels: 4^5 reads of small files
    for level in range(5):
        (tmp_path / f"d{level}.yaml").write_text(f"base: [{', '.join([f'd{level + 1}.yaml'] * 4)}]\n")
    (tmp_path / "d5.yaml").write_text("data: {loader: synthetic}\n")
    refused(tmp_path / "d0.yaml", match=f"`base:` reads more than {config.MAX_LOAD_FILES} files")
    (tmp_path / "d0.yaml").write_text("base: d4.yaml\n")  # 1 + 1 + 4 reads
    assert load_within(tmp_path / "d0.yaml").data.loader == "synthetic"


def test_scalars_yaml_cannot_convert_keys_it_cannot_hash_and_bad_encodings(tmp_path):
    listkey = tmp_path / "listkey.yaml"
    listkey.write_text("data: {loader: synthetic}\n? [1, 2]\n: 3\n")
    refused(listkey, match="listkey.yaml:2: malformed YAML: found unhashable key")
    huge = tmp_path / "huge.yaml"
    huge.write_text("data: {loader: synthetic}\nseed: " + "9" * 5000 + "\n")  # over Python's int() digit limit
    refused(huge, match="huge.yaml: malformed YAML")
    latin = tmp_path / "latin.yaml"
    latin.write_bytes(b"data: {loader: synthetic}\n# caf\xe9\n")
    refused(latin, match="latin.yaml: not UTF-8 text")


# ---------------------------------------------------------------------------------------------
# the CLI as a user runs it: exit 2, one line, within seconds (each of these hung, ran out of memory or gave exit 1)


def cli_within(tmp_path, *args, seconds=90):
    """pgt-train in a subprocess with 4 GiB of address space (a /dev/zero read must not take the machine's memory)."""
    def limit_memory():
        import resource
        resource.setrlimit(resource.RLIMIT_AS, (4 << 30, 4 << 30))
    try:
        return subprocess.run([sys.executable, "-m", "pgt_train", *map(str, args)], cwd=REPO, env=python_env(1),
                              capture_output=True, text=True, timeout=seconds, preexec_fn=limit_memory)
    except subprocess.TimeoutExpired:
        pytest.fail(f"pgt-train {' '.join(map(str, args))}: still running after {seconds} s")


def hostile_recipe(tmp_path, case: str):
    if case == "alias bomb":
        return alias_bomb(tmp_path)
    path = tmp_path / f"{case.replace(' ', '_').replace('/', '_')}.yaml"
    if case == "fifo":
        os.mkfifo(path)
    elif case == "base /dev/zero":
        path.write_text("base: /dev/zero\n")
    elif case == "deep list":
        path.write_text("data: {loader: synthetic}\nseed: " + "[" * 5000 + "]" * 5000 + "\n")
    elif case == "duplicate key":
        path.write_text("data: {loader: synthetic}\nseed: 1\nseed: 2\n")
    return path


@pytest.mark.slow
@pytest.mark.parametrize("case, message", [
    ("alias bomb", "aliases (*name) are not allowed"),
    ("fifo", "is a FIFO, not a YAML file"),
    ("base /dev/zero", "/dev/zero: is a character device"),
    ("deep list", "nested deeper than"),
    ("duplicate key", "duplicate key 'seed'"),
])
def test_cli_refuses_hostile_recipes(tmp_path, case, message):
    result = cli_within(tmp_path, "--config", hostile_recipe(tmp_path, case), "--print-config")
    assert result.returncode == 2, result.stderr
    assert message in result.stderr and "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and result.stdout == ""


@pytest.mark.slow
def test_cli_resume_auto_on_a_folder_whose_config_is_a_bomb(tmp_path):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "summary.csv").write_text("epoch,val_top1\n")
    (run_dir / "config.yaml").write_text("\n".join(bomb_lines()) + "\n")
    result = cli_within(tmp_path, "--config", "/dev/null", *SYNTH, f"run.dir={run_dir}", "--resume", "auto")
    assert result.returncode == 2, result.stderr
    assert "holds a run" in result.stderr and len(result.stderr.strip().splitlines()) == 1
    assert sorted(p.name for p in run_dir.iterdir()) == ["config.yaml", "summary.csv"]  # nothing written
