"""The Compose file and Dockerfiles, checked without an engine: the real Compose v2 CLI validates
them, hadolint lints the Dockerfiles, and `make doctor` says in one line when no engine answers."""
import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers import MAKE_FAILED, ROOT, make, needs, needs_make_venv, one_error

TOOLS = Path(sys.prefix).parent / "tools" / "bin"
pytestmark = [needs_make_venv, needs((TOOLS / "docker-compose").exists(), f"{TOOLS / 'docker-compose'} (make test "
                                                                           f"builds .venv/tools)")]


def compose_config(*files: str) -> dict:
    cmd = [str(TOOLS / "docker-compose")] + [a for f in files for a in ("-f", f)]
    assert subprocess.run(cmd + ["config", "-q"], cwd=ROOT, capture_output=True).returncode == 0
    proc = subprocess.run(cmd + ["config", "--format", "json"], cwd=ROOT, capture_output=True, text=True,
                          env={"HOST_UID": "4242", "HOST_GID": "4343", "PATH": "/usr/bin:/bin"})
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)["services"]


def test_compose_file_validates_with_one_service_per_stage():
    services = compose_config("docker-compose.yml")
    assert set(services) == {"dataset", "fit", "evaluate", "export", "convert", "tensorboard"}
    for name in ("fit", "evaluate"):
        (device,) = services[name]["deploy"]["resources"]["reservations"]["devices"]
        assert device["driver"] == "nvidia" and device["capabilities"] == ["gpu"]
    for name, s in services.items():
        assert s["user"] == "4242:4343", name          # the invoking user, passed by Make
        targets = {v["target"]: v for v in s["volumes"]}
        assert {"/workspace/datasets", "/workspace/artifacts", "/workspace/runs"} <= set(targets)
        assert targets["/workspace/configs"]["read_only"] is True
    assert int(services["fit"]["shm_size"]) >= 2 ** 30
    (port,) = services["tensorboard"]["ports"]
    assert port["host_ip"] == "127.0.0.1" and port["target"] == 6006
    assert services["convert"]["image"].startswith("citypersons-rknn/convert:")


def test_cpu_override_removes_only_the_gpu_reservations():
    services = compose_config("docker-compose.yml", "docker-compose.cpu.yml")
    assert not any("deploy" in s for s in services.values())
    assert set(services) == {"dataset", "fit", "evaluate", "export", "convert", "tensorboard"}


@pytest.mark.parametrize("dockerfile", ["Dockerfile.train", "Dockerfile.convert"])
def test_dockerfiles_pass_hadolint(dockerfile):
    proc = subprocess.run([str(TOOLS / "hadolint"), dockerfile], cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_doctor_without_an_engine_says_so_in_one_line(tmp_path):
    proc = make("doctor", "EXP=demo", root=tmp_path, env={"DOCKER_HOST": f"unix://{tmp_path}/no-engine.sock"})
    # the doctor's own exit 1 (a check failed), said by make; no traceback, nothing else on stderr
    assert proc.returncode == 2 and "Traceback" not in proc.stdout + proc.stderr, proc.stdout + proc.stderr
    (made,) = [MAKE_FAILED.match(line) for line in proc.stderr.splitlines()]
    assert made and made["code"] == "1", proc.stderr
    engine_lines = [line for line in proc.stdout.splitlines() if "Docker engine" in line]
    assert len(engine_lines) == 1 and engine_lines[0].startswith("FAIL")
    assert "no Docker engine answers" in engine_lines[0] and "RUNNER=local" in engine_lines[0]
    assert "doctor: 1 check(s) failed" in proc.stdout


def test_stage_without_an_engine_says_to_use_the_local_runner(tmp_path):
    proc = make("dataset", "EXP=demo", "RUNNER=docker", root=tmp_path,
                env={"DOCKER_HOST": f"unix://{tmp_path}/no-engine.sock"})
    line = one_error(proc, "runner")
    assert "no Docker engine answers" in line and "RUNNER=local" in line
