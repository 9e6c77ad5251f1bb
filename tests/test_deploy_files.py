"""Static checks of the Dockerfile and the SLURM script (no Docker engine or SLURM runs here)."""
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


def test_dockerfile_base_is_pinned_cuda_pytorch():
    froms = [arg for op, arg in dockerfile_instructions() if op == "FROM"]
    assert len(froms) == 1
    image, _, tag = froms[0].partition(":")
    assert image == "pytorch/pytorch" and re.fullmatch(r"\d+\.\d+\.\d+-cuda[\d.]+-cudnn\d+-(runtime|devel)", tag)


def test_dockerfile_copy_sources_exist_and_are_not_ignored():
    ignored = {l.strip() for l in (REPO / ".dockerignore").read_text().splitlines() if l and not l.startswith("#")}
    for op, arg in dockerfile_instructions():
        if op == "COPY":
            parts = [p for p in arg.split() if not p.startswith("--")]
            for source in parts[:-1]:
                assert (REPO / source).exists(), f"COPY source {source} missing"
                assert source not in ignored, f"COPY source {source} is excluded by .dockerignore"
    assert {"data", "runs", ".venv", "*.pth"} <= ignored


def test_dockerfile_installs_with_dali_runs_as_non_root_with_entry_point():
    ops = dockerfile_instructions()
    assert any(op == "RUN" and 'pip install ".[dali,report]"' in arg for op, arg in ops)  # report: pgt-report's figures
    users = [arg for op, arg in ops if op == "USER"]
    assert users and users[-1] not in ("root", "0")
    assert ("ENTRYPOINT", '["pgt-train"]') in ops
    text = (REPO / "pyproject.toml").read_text()
    assert 'pgt-train = "pgt_train.cli:main"' in text and "nvidia-dali-cuda120" in text


def test_slurm_script_is_valid_bash_and_requeues_with_resume():
    script = REPO / "scripts" / "slurm" / "train.sbatch"
    assert subprocess.run(["bash", "-n", str(script)]).returncode == 0
    text = script.read_text()
    for needle in ("#SBATCH --requeue", "#SBATCH --signal=B:USR1@", "--rdzv-backend=c10d", "--resume auto",
                   "scontrol requeue", "scancel --signal=TERM", "-eq 75"):
        assert needle in text, needle
