"""Every piece of advice can be followed: each error message that says "set KEY=VALUE" (or "use KEY: VALUE") is
triggered as a user would, the advice is read from the message itself and applied as an override, and the run (or
the recipe) is then accepted. A hint whose text changes is followed as it then reads. `grep -rn "set \\|use "
pgt_train/` lists the hints; each one that a CPU can trigger has a case here."""
import re

import pytest

from pgt_train import cli, config
from tests.helpers import make_jpeg_folder, tiny_run_args

ADVICE = re.compile(r"\b(?:set|use) ([a-z_]+(?:\.[a-z_]+)+)(?:=|: )([^\s,;)]+)")


def advice(message: str) -> list[str]:
    """The overrides a message advises, in its order: "set amp.dtype=none" -> ["amp.dtype=none"]."""
    found = [f"{key}={value}" for key, value in ADVICE.findall(message)]
    assert found, f"no 'set KEY=VALUE' advice in: {message}"
    return found


BASE = ["data.root=/data"]  # what every recipe of an image folder names; these cases need no real folder


def refusal(overrides: list[str]) -> str:
    with pytest.raises(config.ConfigError) as e:
        config.load(None, [*BASE, *overrides])
    return str(e.value)


def accepted(overrides: list[str]) -> None:
    config.load(None, [*BASE, *overrides])  # raises ConfigError otherwise


@pytest.mark.parametrize("overrides, hint", [
    (["model.dtype=float64", "amp.dtype=fp16"], "amp.dtype=none"),
    (["pgt.form=temperature", "pgt.alpha=0.5", "pgt.impl=authors"], "pgt.impl=exact"),
    (["data.loader=nvjpeg", "data.train_crop=pad_crop"], "data.loader=torchvision"),
    (["data.loader=torchvision", "data.decoder=nvimgcodec"], "data.loader=nvjpeg"),
    (["data.loader=synthetic", "data.demo.enabled=true", "model.num_classes=10"], "data.loader=torchvision"),
], ids=["float64 under amp", "temperature with authors", "pad_crop on the GPU", "decoder without nvjpeg",
        "demo with synthetic"])
def test_recipe_advice_is_accepted(overrides, hint):
    message = refusal(overrides)
    assert advice(message)[0] == hint, message
    accepted([*overrides, hint])


def test_temperature_without_pgt_names_both_ways_out():
    message = refusal(["pgt.form=temperature"])  # "set pgt.alpha (in (0, 1]), or pgt.form=backward"
    assert "pgt.form=backward" in message and "pgt.alpha" in message
    accepted(["pgt.form=temperature", "pgt.form=backward"])
    accepted(["pgt.form=temperature", "pgt.alpha=1.0"])  # the top of the range it names


def train(capsys, *argv) -> tuple[int, str]:
    code = cli.main([str(a) for a in argv])
    return code, capsys.readouterr().err


def follow(capsys, argv: list, *, message: str, then: tuple = ()) -> None:
    """argv is refused (exit 2, one line holding `message`); with the advice it gives appended (and `then`), it
    trains."""
    code, err = train(capsys, *argv)
    assert code == 2 and message in err and err.count("\n") == 1, err
    code, err = train(capsys, *argv, *advice(err), *then)
    assert code == 0, err


@pytest.mark.slow  # trains once the advice is followed
def test_sync_bn_on_the_cpu(tmp_path, capsys):
    follow(capsys, tiny_run_args(tmp_path / "run", "model.sync_bn=true", "run.device=cpu", epochs=1, warmup=0),
           message="needs CUDA GPUs")


@pytest.mark.slow  # trains once the advice is followed
def test_num_classes_that_is_not_the_folder_count(tmp_path, capsys):
    root = make_jpeg_folder(tmp_path / "jpegs", classes=("a", "b"), train=4, val=2)
    follow(capsys, tiny_run_args(tmp_path / "run", root=root, classes=5, batch=4, epochs=1, warmup=0),
           message="set model.num_classes=2")


def test_a_one_class_folder_gets_no_advice_it_cannot_follow(tmp_path, capsys):
    # Was "set model.num_classes=1", which model.num_classes's range [2, ...] then refused.
    root = make_jpeg_folder(tmp_path / "jpegs", classes=("only",), train=4, val=2)
    code, err = train(capsys, *tiny_run_args(tmp_path / "run", root=root, classes=2, batch=4, epochs=1, warmup=0))
    assert code == 2 and "at least 2 class folders" in err and "set " not in err, err


@pytest.mark.slow  # trains once the advice is followed
def test_a_corrupt_image(tmp_path, capsys):
    """Found while training, after the run folder was started: the same command again also needs --resume auto,
    as the refusal of that folder then says (the run restarts in place: data.skip_corrupt does not define it)."""
    root = make_jpeg_folder(tmp_path / "jpegs", classes=("a", "b"), train=4, val=2)
    (root / "train" / "a" / "zz_broken.jpg").write_bytes(b"not a jpeg" * 10)
    follow(capsys, tiny_run_args(tmp_path / "run", "data.skip_corrupt=false", root=root, classes=2, batch=4,
                                 epochs=1, warmup=0),
           message="set data.skip_corrupt=true", then=("--resume", "auto"))


@pytest.mark.slow  # trains once the advice is followed
def test_the_demo_into_a_folder_that_holds_images(tmp_path, capsys):
    root = make_jpeg_folder(tmp_path / "jpegs", classes=("a", "b"), train=4, val=2)
    follow(capsys, tiny_run_args(tmp_path / "run", "data.demo.enabled=true", "data.demo.classes=2", root=root,
                                 classes=2, batch=4, epochs=1, warmup=0),
           message="set data.demo.enabled=false")


@pytest.mark.slow  # trains once the advice is followed
def test_dali_on_the_gpu_without_cuda(tmp_path, capsys):
    pytest.importorskip("nvidia.dali")
    import torch
    if torch.cuda.is_available():
        pytest.skip("the hint is for a machine without CUDA")
    root = make_jpeg_folder(tmp_path / "jpegs", classes=("a", "b"), train=4, val=2)
    follow(capsys, tiny_run_args(tmp_path / "run", "data.loader=dali", "data.dali_device=gpu", root=root, classes=2,
                                 batch=4, epochs=1, warmup=0),
           message="use data.dali_device=cpu")
