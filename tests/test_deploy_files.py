"""Static checks of the Dockerfile's GPU defaults and the SLURM script (tests/test_docker.py builds and runs the image)."""
import re
import subprocess

from tests.helpers import REPO


def dockerfile_instructions():
    lines, current = [], ""
    for raw in (REPO / "Dockerfile").read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        current += line.rstrip("\\") + " "
        if not line.endswith("\\"):
            lines.append(current.strip())
            current = ""
    return [(l.split(None, 1)[0].upper(), l.split(None, 1)[1] if " " in l else "") for l in lines]


def test_dockerfile_defaults_are_the_pinned_cuda_pytorch_image_and_the_dali_report_extras():
    """What tests/test_docker.py cannot run here (it builds FROM a local base): the defaults a GPU cluster gets.
    The build, the COPY sources, the entry point, the users and the image's contents are tested for real there."""
    ops = dockerfile_instructions()
    args = dict(arg.partition("=")[::2] for op, arg in ops if op == "ARG")
    image, _, tag = args["BASE_IMAGE"].partition(":")
    assert image == "pytorch/pytorch" and re.fullmatch(r"\d+\.\d+\.\d+-cuda[\d.]+-cudnn\d+-(runtime|devel)", tag)
    assert args["EXTRAS"] == "dali,report" and "nvidia-dali-cuda120" in (REPO / "pyproject.toml").read_text()
    assert {"data", "runs", ".venv", "*.pth", ".git"} <= set((REPO / ".dockerignore").read_text().split())


def test_slurm_script_is_valid_bash_and_requeues_with_resume():
    script = REPO / "scripts" / "slurm" / "train.sbatch"
    assert subprocess.run(["bash", "-n", str(script)]).returncode == 0
    text = script.read_text()
    for needle in ("#SBATCH --requeue", "#SBATCH --signal=B:USR1@", "--rdzv-backend=c10d", "--resume auto",
                   "scontrol requeue", "scancel --signal=TERM", "-eq 75"):
        assert needle in text, needle
