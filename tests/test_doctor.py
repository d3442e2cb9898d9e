"""The doctor's checks of a GPU machine, on machines this one cannot be: a container with Docker's
64 MB /dev/shm, an old driver, torch that sees no GPU. The lines the doctor prints for them are the
lines docs/troubleshooting.md shows. And the data lines docs/thesis/data.md promises."""
import json
import subprocess

import pytest

from services.doctor.__main__ import line, torch_checks
from tests.helpers import ROOT, make

TROUBLESHOOTING = (ROOT / "docs" / "troubleshooting.md").read_text().splitlines()


def machine(gpus: str, probe: dict):
    """What `nvidia-smi` and the torch probe answer inside such a machine's train container."""
    def inside(*command: str) -> subprocess.CompletedProcess:
        if command[0] == "nvidia-smi":
            return subprocess.CompletedProcess(command, 0 if gpus else 127, gpus, "" if gpus else "not found")
        return subprocess.CompletedProcess(command, 0, "some torch warning\n" + json.dumps(probe) + "\n", "")
    return inside


def doctor_lines(gpus: str, probe: dict, gpu: bool = True) -> dict:
    checks = torch_checks(machine(gpus, probe), gpu, "in the train container", "the train image")
    return {check: line(status, check, text) for status, check, text in checks}


def test_the_failures_troubleshooting_shows_are_what_the_doctor_prints():
    lines = doctor_lines("NVIDIA GeForce RTX 3090, 535.183.04\n",
                         {"cuda": False, "count": 0, "built_for": "13.0", "shm_gb": 0.067})
    assert lines.keys() == {"nvidia runtime", "torch gpu", "driver vs cuda", "shm"}
    assert lines["nvidia runtime"].startswith("ok    nvidia runtime  1 GPU(s) in the train container: "
                                              "NVIDIA GeForce RTX 3090; driver 535.183.04")
    for check in ("torch gpu", "driver vs cuda", "shm"):
        assert lines[check].startswith("FAIL ") and lines[check] in TROUBLESHOOTING, lines[check]


def test_a_machine_that_can_train_passes_every_gpu_check():
    lines = doctor_lines("NVIDIA GeForce RTX 3090, 535.183.04\n",  # a CUDA 12 image on driver 535: fine
                         {"cuda": True, "count": 1, "built_for": "12.8", "shm_gb": 8.0})
    assert [v.split()[0] for v in lines.values()] == ["ok"] * 4, lines
    assert lines["driver vs cuda"].endswith("driver 535.183.04 runs CUDA 12.8 (needs >= 525)")
    assert lines["shm"] == line("ok", "shm", "/dev/shm in the train container: 8.0 GB")


def test_without_nvidia_smi_in_the_container_the_fix_is_the_toolkit_or_the_cpu_override():
    lines = doctor_lines("", {"cuda": False, "count": 0, "built_for": "13.0", "shm_gb": 8.0})
    assert lines["nvidia runtime"].startswith("FAIL  nvidia runtime  nvidia-smi does not run in the train container")
    assert lines["nvidia runtime"].endswith("restart the engine, or use the CPU override with GPU=0")
    cpu = doctor_lines("", {"cuda": False, "count": 0, "built_for": "13.0", "shm_gb": 8.0}, gpu=False)
    assert cpu["nvidia runtime"].startswith("warn ") and "torch gpu" not in cpu and cpu["torch"].startswith("ok ")


@pytest.mark.parametrize("present", [False, True])
def test_the_doctor_says_in_one_line_each_whether_the_data_is_there(tmp_path, present):
    """docs/thesis/data.md: `make doctor` tells you, one line each, `datasets` and `coco person`."""
    if present:
        raw = tmp_path / "datasets" / "citypersons" / "raw"
        (raw / "leftImg8bit" / "train").mkdir(parents=True)
        for name in ("anno_train.mat", "anno_val.mat"):
            (raw / name).write_bytes(b"")
        coco = tmp_path / "datasets" / "coco" / "raw"
        (coco / "val2017").mkdir(parents=True)
        (coco / "annotations").mkdir()
        (coco / "annotations" / "instances_val2017.json").write_text("{}")
    proc = make("doctor", "EXP=citypersons", root=tmp_path, env={"DOCKER_HOST": f"unix://{tmp_path}/no-engine.sock"})
    data = [x for x in proc.stdout.splitlines() if x.split(" ", 1)[-1].lstrip().startswith(("datasets ", "coco person "))]
    assert len(data) == 2, proc.stdout
    if present:
        assert data == [line("ok", "datasets", "datasets/citypersons/raw/ has the Cityscapes images and both "
                             "annotation files"),
                        line("ok", "coco person", "datasets/coco/raw/ has val2017 and its annotations")]
    else:
        assert data[0].startswith("FAIL  datasets        datasets/citypersons/raw/leftImg8bit_trainvaltest.zip is "
                                  "missing: it needs a Cityscapes account")
        assert data[1].startswith("warn  coco person     datasets/coco/raw/ lacks val2017")
