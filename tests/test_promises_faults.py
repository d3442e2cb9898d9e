"""Promises of docs/development.md ("Faults") and docs/troubleshooting.md that need no training:
temporary files of another host or of a live process are left alone when a stage cleans up after
killed runs; a toolkit failure shows the last 15 lines of its log above the one-line error; `GPU=1`
without an NVIDIA runtime is one line from make; a sweep trial's CUDA_VISIBLE_DEVICES goes into the
container with the Compose command the runner builds."""
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
import yaml

from tests.helpers import CONVERT_PY, ROOT, demo_root, make, needs_convert_env, one_error, run_module, stage_env
from tests.test_board_runtime import tiny_onnx
from services.common import files
from services.run import runner
from services.run.runner import Settings

DEMO = str(ROOT / "configs" / "demo.yaml")
OTHER_HOST = "node-17"  # a machine sharing the project folder (a sweep on a cluster)


def dead_pid() -> int:
    """The pid of a process that has ended."""
    proc = subprocess.Popen(["true"])
    proc.wait()
    return proc.pid


@pytest.fixture
def live_pid():
    """The pid of a running process (as a container's pid that happens to be alive here)."""
    proc = subprocess.Popen(["sleep", "600"])
    yield proc.pid
    proc.kill()
    proc.wait()


# ------------------------------------------------------------------------------ temporary files
def test_clean_stale_temps_removes_only_this_hosts_files_of_ended_processes(tmp_path, live_pid):
    gone = dead_pid()
    kept = [tmp_path / f".demo.tmp-{OTHER_HOST}-{gone}.onnx",         # another host: its pid means nothing here
            tmp_path / "models" / f".demo.tmp-{files.HOST}-{live_pid}.onnx",  # a live process's
            tmp_path / f".yolo.tmp-{files.HOST}-{os.getpid()}",        # this process's own
            tmp_path / f"demo.tmp-{files.HOST}-{gone}.onnx"]           # not a temporary name (not hidden)
    removed = [tmp_path / f".best.tmp-{files.HOST}-{gone}.pt",
               tmp_path / "models" / f".report.replaced-{files.HOST}-{gone}",  # a folder, one level down
               tmp_path / f".old.tmp-{gone}.json"]                      # from before hosts were recorded
    for p in kept + removed:
        p.parent.mkdir(parents=True, exist_ok=True)
        if "replaced" in p.name or "yolo" in p.name:  # a build folder
            (p / "inside").mkdir(parents=True)
        else:
            p.write_text("partial\n")
    assert sorted(files.clean_stale_temps(tmp_path)) == sorted(removed)
    assert all(p.exists() for p in kept) and not any(p.exists() for p in removed)


def test_a_stage_leaves_another_hosts_and_a_live_processs_temporary_files_alone(tmp_path, demo_raw, live_pid):
    """The dataset stage on start removes what killed runs of this machine left in the experiment's
    folders and says so in one line; another machine's files (shared storage) and those of a process
    alive here are not touched."""
    root = demo_root(tmp_path, demo_raw)
    gone = dead_pid()
    ours = [root / "datasets" / "demo" / f".yolo.tmp-{files.HOST}-{gone}",
            root / "artifacts" / "demo" / "models" / f".demo.tmp-{files.HOST}-{gone}.onnx"]
    theirs = [root / "datasets" / "demo" / f".yolo.tmp-{OTHER_HOST}-{gone}",
              root / "artifacts" / "demo" / "metrics" / f".pt.tmp-{OTHER_HOST}-{live_pid}.json",
              root / "runs" / "demo" / f".train.replaced-{files.HOST}-{live_pid}"]
    for p in ours + theirs:
        p.parent.mkdir(parents=True, exist_ok=True)
        if p.name.endswith((".onnx", ".json")):
            p.write_text("half-written\n")
        else:  # a build folder
            (p / "labels").mkdir(parents=True)
    proc = run_module("dataset", ["--config", DEMO], root)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    said = [line for line in proc.stdout.splitlines() if "temporary file(s) left by killed runs" in line]
    assert len(said) == 1, proc.stdout[-3000:]
    assert said[0].startswith("dataset: removed 2 temporary file(s) left by killed runs: "), said
    for p in ours:
        assert not p.exists() and str(p.relative_to(root)) in said[0]
    for p in theirs:
        assert p.exists() and p.name not in said[0], p
    assert (root / "datasets" / "demo" / "yolo" / "manifest.json").is_file()


# ------------------------------------------------------------------------------ the toolkit's log
def failing_model(root: Path) -> None:
    """artifacts/demo/models/demo.rknn-head.onnx that passes the stage's own checks (static input, a
    known opset, the dfl layout) but holds an operator no runtime knows, so rknn-toolkit2 itself fails;
    and a calibration list of three readable images."""
    import onnx
    path = tiny_onnx(root / "artifacts" / "demo" / "models" / "demo.rknn-head.onnx", size=(64, 64))
    model = onnx.load(str(path))
    next(n for n in model.graph.node if n.op_type == "Sigmoid").op_type = "NoSuchOp"
    onnx.save(model, str(path))
    (root / "calib").mkdir()
    for i in range(3):
        image = np.random.default_rng(i).integers(0, 255, (64, 64, 3), dtype=np.uint8)
        cv2.imwrite(str(root / "calib" / f"c{i}.png"), image)
    (root / "calib.txt").write_text("".join(f"calib/c{i}.png\n" for i in range(3)))


@needs_convert_env
@pytest.mark.parametrize("hybrid, step", [("scores", "hybrid_quantization_step1"), ("none", "build")])
def test_a_toolkit_failure_shows_the_last_15_log_lines_above_the_one_line_error(tmp_path, hybrid, step):
    """Both ways the toolkit runs: the hybrid build's step 1 in a child process, the plain build in the
    stage's own process. Its hundreds of lines stay in the log; the terminal gets the last 15 and one line."""
    root = tmp_path / "root"
    failing_model(root)
    proc = subprocess.run([str(CONVERT_PY), "-m", "services.convert", "--config", DEMO, "convert.calibration=calib.txt",
                           f"convert.hybrid={hybrid}"], cwd=ROOT, env=stage_env(root), capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 2, proc.stdout[-2000:] + proc.stderr[-3000:]
    log = root / "artifacts" / "demo" / "rknn" / "toolkit.log"
    written = [line for line in log.read_text(errors="replace").replace("\r", "\n").splitlines() if line.strip()]
    assert len(written) > 15, written  # more than is shown
    err = proc.stderr.splitlines()
    assert err[0] == "rknn-toolkit2's last log lines:", err[:3]
    assert err[1:16] == [f"  | {line}" for line in written[-15:]]
    assert len(err) == 17 and err[16].startswith(f"convert: error: rknn-toolkit2 {step} failed ("), err[15:]
    assert err[16].endswith("; its last log lines are above (whole log: artifacts/demo/rknn/toolkit.log)")
    assert proc.stdout.splitlines() == ["convert: building artifacts/demo/models/demo_int8_rk3588.rknn; "
                                        "rknn-toolkit2's own messages go to artifacts/demo/rknn/toolkit.log"]
    assert sorted(p.name for p in (root / "artifacts" / "demo" / "models").iterdir()) == ["demo.rknn-head.onnx"]


# ------------------------------------------------------------------------------ the GPU
def nvidia_smi_works() -> bool:
    return shutil.which("nvidia-smi") is not None and subprocess.run(["nvidia-smi", "-L"],
                                                                     capture_output=True).returncode == 0


@pytest.mark.skipif(nvidia_smi_works(), reason="this machine has an NVIDIA GPU: GPU=1 is right here")
def test_gpu_1_without_an_nvidia_runtime_is_one_line_from_make(tmp_path):
    """`make dataset RUNNER=docker GPU=1` where the engine lists no NVIDIA runtime and nvidia-smi does not
    work. The engine: DOCKER=true, a Docker CLI whose `info` succeeds and lists no runtime (no engine is
    needed to refuse, and none is started)."""
    proc = make("dataset", "EXP=demo", "RUNNER=docker", "GPU=1", "DOCKER=true", root=tmp_path)
    line = one_error(proc, who="runner")
    assert line == ("runner: error: GPU=1 but this machine has no NVIDIA runtime (the engine lists none and "
                    "nvidia-smi does not work); install the NVIDIA Container Toolkit (`make doctor` explains), "
                    "or use GPU=0 for the CPU override"), line
    assert not list(tmp_path.iterdir())  # refused before any work


# ------------------------------------------------------------------------------ CUDA_VISIBLE_DEVICES
def compose_command(tmp_path: Path, monkeypatch, visible: str | None) -> list:
    """The Compose command the runner builds for one stage of a sweep's trial, as Compose would receive
    it: the runner's COMPOSE is a program that writes its arguments out (no engine runs anything)."""
    if visible is None:
        monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    else:
        monkeypatch.setenv("CUDA_VISIBLE_DEVICES", visible)  # what Ray sets in the trial's worker
    recorder = [sys.executable, "-c", "import json, sys; print(json.dumps(sys.argv[1:]))"]
    s = Settings(exp="demo", experiment="gpus-a-s0", compose=recorder, docker=["/nonexistent/docker"])
    log = tmp_path / f"compose-{visible}.log"
    with log.open("w") as f:
        code = runner.compose_run(s, "fit", runner.stage_command(s, "fit"), gpu=True, log=f)
    assert code == 125  # no engine to inspect a container: "the container did not start"
    return json.loads(log.read_text())


def test_a_trials_cuda_visible_devices_is_passed_into_the_container(tmp_path, monkeypatch):
    argv = compose_command(tmp_path, monkeypatch, "1")
    assert argv[:3] == ["-f", "docker-compose.yml", "run"]  # GPU: the NVIDIA reservation, no CPU override
    service = argv.index("fit")
    passed = [argv[i + 1] for i in range(service) if argv[i] == "-e"]
    assert "CUDA_VISIBLE_DEVICES=1" in passed, argv
    assert argv[service:] == ["fit", "python", "-m", "services.fit", "--config", "configs/demo.yaml", "--experiment",
                              "gpus-a-s0"]
    # outside a trial nothing is set: the container sees every GPU the reservation mounts
    argv = compose_command(tmp_path, monkeypatch, None)
    assert not [a for a in argv if a.startswith("CUDA_VISIBLE_DEVICES")], argv
    # the reservation mounts them all, so the variable chooses among every GPU of the machine
    services = yaml.safe_load((ROOT / "docker-compose.yml").read_text())["services"]
    for name in ("fit", "evaluate"):
        assert services[name]["deploy"]["resources"]["reservations"]["devices"] == [
            {"driver": "nvidia", "count": "all", "capabilities": ["gpu"]}], name
