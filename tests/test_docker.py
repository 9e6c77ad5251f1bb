"""The Docker image built from the repo's Dockerfile and run for real (tests/docker/: our own dockerd under
/var/cache/pgt-train-docker, --network=host). Two local Debian + torch bases: Debian's own python3 with torch
installed system-wide (PEP 668, no `python`), and a venv on PATH as in the official images. On the system base,
four runs inside containers: the shortened demo (compared with the same run outside), `docker stop` mid-epoch
then `--resume auto`, pgt-torchrun with 2 ranks, pgt-report. On both, the image keeps the base's torch.
Skipped, with the reason, only when docker.io cannot be installed."""
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest
import torch

from pgt_train import writers

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[1]
ENGINE = REPO / "tests" / "docker" / "engine.sh"
CACHE = Path(os.environ.get("PGT_DOCKER_CACHE", "/var/cache/pgt-train-docker"))
BASE_SYSTEM, BASE_VENV = "pgt-train-base:bookworm-system-torch", "pgt-train-base:bookworm-venv-torch"
IMAGE, IMAGE_VENV = "pgt-train:test", "pgt-train:test-venv"
# Which torch a python3 imports, down to its file's mtime: a reinstall over the base's would change it.
TORCH_PROBE = "import os, sys, torch; print(sys.executable, torch.__version__, os.stat(torch.__file__).st_mtime_ns)"
HOST_CA = Path("/etc/ssl/certs/ca-certificates.crt")
# The demo recipe, shortened (2 cores): a smaller generated set of its own, 3 epochs.
DEMO = ["--config", "configs/demo.yaml", "data.root=data/docker-demo", "data.demo.train_per_class=60",
        "data.demo.val_per_class=20", "data.batch_size=32", "sched.epochs=3", "run.log_interval=5"]
OTHER_UID = 4321  # a non-root host user's uid for the runs that check ownership by someone other than root


def say(config, line: str) -> None:
    """Measurements on the terminal even under pytest's capture."""
    with config.pluginmanager.getplugin("capturemanager").global_and_fixture_disabled():
        config.pluginmanager.getplugin("terminalreporter").write_line(f"[docker-test] {line}")


def sh(*cmd, env=None, timeout=600, check=True) -> subprocess.CompletedProcess:
    """`cmd`'s exit code and output. Past `timeout` it gets SIGABRT first: a Python under PYTHONFAULTHANDLER=1
    (the outside run) then prints every thread's stack, so a hang in CI says where it hung."""
    with subprocess.Popen([str(c) for c in cmd], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          text=True) as child:
        try:
            out, err = child.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            child.send_signal(signal.SIGABRT)  # our own child, by its pid
            try:
                out, err = child.communicate(timeout=30)
            except subprocess.TimeoutExpired:  # its own children may hold the pipes: give up on them
                child.kill()
                out, err = "", "(still running 30 s after SIGABRT: killed, output lost)"
            raise AssertionError(f"{cmd} still running after {timeout} s\n{out[-3000:]}\n{err[-8000:]}") from None
    proc = subprocess.CompletedProcess(child.args, child.returncode, out, err)
    if check and proc.returncode:
        raise AssertionError(f"{cmd} exited {proc.returncode}\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return proc


def build(request, env, base: str, image: str) -> None:
    """This Dockerfile built on `base` as `image` (the host's CA bundle in docker/ca/ for pip's proxy)."""
    (REPO / "docker" / "ca").mkdir(exist_ok=True)
    if HOST_CA.is_file():  # this machine's TLS-intercepting proxy; docker/ca/ is git-ignored
        (REPO / "docker" / "ca" / "host-bundle.crt").write_bytes(HOST_CA.read_bytes())
    start = time.monotonic()
    sh("docker", "build", "--network=host", "--build-arg", f"BASE_IMAGE={base}", "-t", image, REPO,
       env=env, timeout=3600)
    size = int(sh("docker", "image", "inspect", "--format", "{{.Size}}", image, env=env).stdout)
    say(request.config, f"project image on {base}: {time.monotonic() - start:.0f} s, {image} {size / 1e9:.2f} GB")


@pytest.fixture(scope="session")
def docker_env(request):
    """DOCKER_HOST of our own dockerd, with the base images and the project image on the system base built;
    the daemon stops after."""
    if os.geteuid() != 0:
        pytest.skip("Docker test needs root (apt-get install docker.io, dockerd)")
    installed = subprocess.run([ENGINE, "install"], capture_output=True, text=True)
    if installed.returncode:
        print(installed.stderr[-2000:])
        pytest.skip(f"docker.io/debootstrap cannot be installed here (apt exit {installed.returncode})")
    host = sh(ENGINE, "up", CACHE).stdout.strip()
    env = {**os.environ, "DOCKER_HOST": host}
    try:
        start = time.monotonic()
        sh(REPO / "tests" / "docker" / "base_image.sh", CACHE, BASE_SYSTEM, BASE_VENV, env=env, timeout=3600)
        say(request.config, f"base images: {time.monotonic() - start:.0f} s")
        build(request, env, BASE_SYSTEM, IMAGE)
        yield env
    finally:
        sh(ENGINE, "down", CACHE, check=False)
        left = [line for line in Path("/proc/mounts").read_text().splitlines() if f" {CACHE}/" in line]
        assert not left, f"engine.sh down left mounts under {CACHE}: {left}"


def docker_run(env, *args, user, mounts, opts=(), name=None, entry=None, detach=False, timeout=600, image=IMAGE):
    """`docker run` as the tests' users run it: host network, --user UID:GID, folders mounted."""
    cmd = ["docker", "run", "--network=host", "--user", f"{user}:{user}", *opts]
    cmd += ["-d"] if detach else ["--rm"]
    cmd += ["--name", name] if name else []
    cmd += ["--entrypoint", entry] if entry else []
    for host_dir, inside in mounts.items():
        cmd += ["-v", f"{host_dir}:{inside}"]
    return sh(*cmd, image, *args, env=env, timeout=timeout, check=False)


@pytest.fixture(scope="session")
def outside(tmp_path_factory):
    """The shortened demo run outside any container (the host's .venv): it generates the JPEGs that every
    container then reads from a read-only mount, and is the reference for the run inside."""
    tmp = tmp_path_factory.mktemp("outside")
    sh(REPO / ".venv" / "bin" / "pgt-train", *DEMO, f"run.dir={tmp / 'run'}",
       f"data.root={tmp / 'data' / 'docker-demo'}", env={**os.environ, "PYTHONFAULTHANDLER": "1"})
    return tmp / "data", tmp / "run"


@pytest.mark.parametrize("base, image", [(BASE_SYSTEM, IMAGE), (BASE_VENV, IMAGE_VENV)], ids=["system", "venv"])
def test_image_keeps_the_base_python_and_torch(request, docker_env, base, image):
    """On Debian's own python3 (PEP 668, no `python`) and on a venv first on PATH, as in the official images:
    the image installs into the base's python3 (the same interpreter), keeps its torch file untouched, runs
    pgt-train, and does not keep the build's PIP_BREAK_SYSTEM_PACKAGES for its users."""
    if image != IMAGE:
        build(request, docker_env, base, image)
    in_base = sh("docker", "run", "--rm", "--network=host", "--entrypoint", "python3", base, "-c", TORCH_PROBE,
                 env=docker_env).stdout
    in_image = docker_run(docker_env, "-c", TORCH_PROBE, user=0, mounts={}, entry="python3", image=image)
    assert in_image.returncode == 0 and in_image.stdout == in_base, (in_base, in_image.stdout + in_image.stderr)
    helped = docker_run(docker_env, user=os.getuid(), mounts={}, image=image)  # the image's CMD: --help
    assert helped.returncode == 0 and "pgt-train" in helped.stdout, helped.stdout + helped.stderr
    env = sh("docker", "image", "inspect", "--format", "{{json .Config.Env}}", image, env=docker_env).stdout
    assert "PIP_BREAK_SYSTEM_PACKAGES" not in env, env


def owners(folder: Path) -> set[int]:
    return {p.stat().st_uid for p in [folder, *folder.rglob("*")]}


def last_row(run_dir: Path) -> dict:
    return writers.read_summary(run_dir / "summary.csv")[-1]


def test_image_holds_no_git_data_runs_venvs_or_checkpoints(docker_env):
    found = docker_run(docker_env, "-c", "find /opt/pgt-train /workspace -name .git -o -name .venv -o -name venv "
                       "-o -name '*.pth' -o -name '*.safetensors' -o -name '*.egg-info' -o -name tests "
                       "-o -path '/workspace/data/*' -o -path '/workspace/runs/*'; echo ===; ls -A /workspace",
                       user=0, mounts={}, entry="sh")
    hits, _, workspace = found.stdout.partition("===")
    assert found.returncode == 0 and not hits.split(), found.stdout + found.stderr
    assert sorted(workspace.split()) == ["configs", "data", "runs", "scripts"], workspace


def test_demo_in_container_matches_outside_and_host_user_owns_files(docker_env, outside, tmp_path):
    """(1) The shortened demo as the invoking host user (root here): exit 0, files owned by the host user,
    the same epochs and val images as outside, val top-1 within a point."""
    data, outside_run = outside
    runs = tmp_path / "runs"
    runs.mkdir()
    uid = os.getuid()
    got = docker_run(docker_env, *DEMO, "run.dir=runs/demo", user=uid,
                     mounts={runs: "/workspace/runs", data: "/workspace/data:ro"})
    assert got.returncode == 0, got.stdout[-3000:] + got.stderr[-3000:]
    assert owners(runs / "demo") == {uid}
    inside_row, outside_row = last_row(runs / "demo"), last_row(outside_run)
    assert inside_row["epoch"] == outside_row["epoch"] == "3"
    assert inside_row["val_images"] == outside_row["val_images"] == "200"
    assert abs(float(inside_row["val_top1"]) - float(outside_row["val_top1"])) <= 1.0, (inside_row, outside_row)


def test_docker_stop_mid_epoch_exits_75_and_resume_auto_finishes(docker_env, outside, tmp_path):
    """(2) docker stop (SIGTERM to tini, then pgt-train) in epoch 2 of 3, as a non-root host uid: exit 75,
    a loadable last.pth, and --resume auto in a new container runs to the end. (4) pgt-report over it."""
    data, runs = outside[0], tmp_path / "runs"
    runs.mkdir()
    os.chown(runs, OTHER_UID, OTHER_UID)  # the non-root user's own folder
    mounts = {runs: "/workspace/runs", data: "/workspace/data:ro"}
    name = f"pgt-train-stop-{os.getpid()}"
    sh("docker", "rm", "-f", name, env=docker_env, check=False)
    started = docker_run(docker_env, *DEMO, "run.dir=runs/stop", user=OTHER_UID, mounts=mounts, name=name,
                         detach=True)
    assert started.returncode == 0, started.stderr
    try:
        run_dir, deadline = runs / "stop", time.time() + 600
        while not writers.read_summary(run_dir / "summary.csv") and time.time() < deadline:
            time.sleep(0.5)
        assert writers.read_summary(run_dir / "summary.csv"), sh("docker", "logs", name, env=docker_env).stderr
        time.sleep(2)  # inside epoch 2
        sh("docker", "stop", "-t", "120", name, env=docker_env)
        code = sh("docker", "wait", name, env=docker_env).stdout.strip()
        logs = sh("docker", "logs", name, env=docker_env)
        assert code == "75", logs.stdout[-3000:] + logs.stderr[-3000:]
        assert "SIGTERM: saved" in logs.stdout + logs.stderr and "Traceback" not in logs.stderr
    finally:
        sh("docker", "rm", "-f", name, env=docker_env, check=False)
    state = torch.load(run_dir / "last.pth", map_location="cpu", weights_only=True)
    assert isinstance(state, dict) and state
    assert len(writers.read_summary(run_dir / "summary.csv")) == 1  # stopped before epoch 2 ended
    resumed = docker_run(docker_env, *DEMO, "run.dir=runs/stop", "--resume", "auto", user=OTHER_UID, mounts=mounts)
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    assert [r["epoch"] for r in writers.read_summary(run_dir / "summary.csv")] == ["1", "2", "3"]
    assert owners(runs) == {OTHER_UID}
    # (4) pgt-report over the run folder, in a container, as the same user
    report = docker_run(docker_env, "runs/stop", "--out", "runs/report", user=OTHER_UID, mounts=mounts,
                        entry="pgt-report")
    assert report.returncode == 0, report.stdout[-3000:] + report.stderr[-3000:]
    assert (runs / "report" / "report.md").stat().st_size > 0 and owners(runs / "report") == {OTHER_UID}


def test_pgt_torchrun_two_ranks_in_container(docker_env, outside, tmp_path):
    """(3) pgt-torchrun --nproc_per_node=2 as the entry point, docker's --init (tini) as PID 1, --ipc=host
    for the loader workers' shared memory."""
    data, runs = outside[0], tmp_path / "runs"
    runs.mkdir()
    got = docker_run(docker_env, "--standalone", "--nproc_per_node=2", "-m", "pgt_train", *DEMO,
                     "sched.epochs=1", "sched.warmup_epochs=0", "run.dir=runs/ddp", user=os.getuid(),
                     entry="pgt-torchrun",
                     opts=("--init", "--ipc=host", "-e", "OMP_NUM_THREADS=1"),
                     mounts={runs: "/workspace/runs", data: "/workspace/data:ro"})
    assert got.returncode == 0, got.stdout[-3000:] + got.stderr[-3000:]
    assert [r["epoch"] for r in writers.read_summary(runs / "ddp" / "summary.csv")] == ["1"]
    assert (runs / "ddp" / "last.pth").is_file()
