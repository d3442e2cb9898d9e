"""Sweeps on Ray (services/sweep/): the sweep file's checks, GPUs handed out by Ray, and the demo sweep
itself: every trial a whole chain in its own folders, a failed trial that does not stop the others,
and a rerun that skips what is done and resumes what was killed."""
import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from tests.helpers import ROOT, SWEEP_TRIALS, one_error, require, run_module, stage_env
from services.sweep import sweep

RAY = Path(sys.executable).parent / "ray"


def write_sweep(tmp_path: Path, text: str, name: str = "trial-sweep") -> Path:
    path = tmp_path / f"{name}.yaml"
    path.write_text(text)
    return path


@pytest.mark.parametrize("text, expected", [
    ("base: demo\nvariants:\n  a: [train.imgsz2=256]\n",
     r"trial-sweep.yaml: variant a: override: unknown key train.imgsz2 \(did you mean 'imgsz'\?\)"),
    ("base: demo\nvariants:\n  a: [train.epochs=many]\n", r"trial-sweep.yaml: variant a: .*train.epochs"),
    ("base: demo\nvariants:\n  a: []\n  b: [train.epochs=2]\n  a: [train.epochs=3]\n",
     r"trial-sweep.yaml, line 5: 'a' is given twice; give each variant"),
    ("base: demo\nseeds: []\n", r"seeds must be a non-empty list of ints"),
    ("base: demo\nseeds: [0, 0]\n", r"seeds=\[0, 0\] must be distinct ints"),
    ("base: nosuch\n", r"base='nosuch' is not an experiment; use one of: .*demo"),
    ("base: demo\nstages: [fit, deploy]\n", r"unknown stage\(s\) deploy; stages are dataset, fit"),
    ("base: demo\nvariant: {}\n", r"unknown key\(s\) variant; a sweep file takes"),
    ("base: demo\nvariants:\n  a: [dataset.selection_fraction=0.2]\n  b: []\n",
     r"variants a and b build dataset 'demo' differently \(dataset.selection_fraction\); give one of them "
     r"its own dataset.name"),
])
def test_bad_sweep_files_are_one_line_and_start_nothing(tmp_path, text, expected):
    proc = run_module("sweep", [str(write_sweep(tmp_path, text))], tmp_path, timeout=120)
    assert proc.returncode == 2, proc.stderr
    assert __import__("re").search(expected, one_error(proc, "sweep")), one_error(proc)
    assert not (tmp_path / "artifacts").exists()


def test_an_unreachable_ray_address_is_one_line_and_starts_nothing(tmp_path):
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    path = write_sweep(tmp_path, "base: demo\nseeds: [0]\n")
    proc = run_module("sweep", [str(path)], tmp_path, timeout=120, env={"RAY_ADDRESS": f"127.0.0.1:{port}"})
    assert proc.returncode == 2
    assert one_error(proc, "sweep").startswith(f"sweep: error: RAY_ADDRESS=127.0.0.1:{port}: no Ray cluster answers")
    assert not (tmp_path / "artifacts").exists()


def test_gpus_follow_train_device():
    assert [sweep.gpus_wanted(d) for d in ("cpu", "0", "0,1", " 1 ", "", None)] == [0, 1, 2, 1, 0, 0]


@pytest.fixture
def ray_cluster_with_two_gpus(tmp_path):
    """A real Ray cluster (`ray start --head`) told it has 2 GPUs: no GPU needed, Ray hands them out.
    Its processes are found by its own temp folder and stopped alone: `ray stop` would stop every
    Ray instance on the machine, a sweep another test runs beside this one included."""
    require(RAY.is_file(), f"Ray's CLI {RAY} (make test installs it in .venv/train from the train lock)")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    temp = Path(tempfile.mkdtemp(prefix="ray-", dir="/tmp"))  # short: Ray's socket paths must fit 107 bytes
    env = {**stage_env(tmp_path), "PYTHONPATH": str(ROOT), "RAY_AUTH_MODE": "token"}
    start = subprocess.run([str(RAY), "start", "--head", f"--port={port}", "--num-cpus=2", "--num-gpus=2",
                            f"--temp-dir={temp}", "--include-dashboard=false", "--disable-usage-stats",
                            "--object-store-memory=100000000"], env=env, capture_output=True, text=True, timeout=180)
    try:
        assert start.returncode == 0, start.stdout[-2000:] + start.stderr[-2000:]
        yield f"127.0.0.1:{port}"
    finally:
        stop_processes_mentioning(str(temp))
        shutil.rmtree(temp, ignore_errors=True)


def stop_processes_mentioning(word: str) -> None:
    pids = [int(p.parent.name) for p in Path("/proc").glob("[0-9]*/cmdline")
            if word.encode() in _read(p)]
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)
        time.sleep(2)


def _read(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError:
        return b""


@pytest.mark.slow  # a Ray cluster of its own: about a minute
def test_two_trials_on_two_gpus_get_one_each(tmp_path, demo_raw, ray_cluster_with_two_gpus):
    """Two trials that each want one GPU run side by side on a 2-GPU cluster, each seeing only its own.
    (The stages run here need no GPU: only the dataset, which the second trial finds up to date.)"""
    shutil.copytree(demo_raw, tmp_path / "datasets" / "demo" / "raw")
    path = write_sweep(tmp_path, "base: demo\nseeds: [0]\nstages: [dataset]\nvariants:\n"
                                 "  a: [train.device=0]\n  b: [train.device=0]\n", name="gpus")
    proc = run_module("sweep", [str(path)], tmp_path, timeout=600,
                      env={"RAY_ADDRESS": ray_cluster_with_two_gpus, "RAY_AUTH_MODE": "token", "RUNNER": "local"})
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    trials = json.loads((tmp_path / "artifacts/gpus/sweep.json").read_text())["trials"]
    assert [t["status"] for t in trials] == ["done", "done"]
    assert sorted(g for t in trials for g in t["gpus"]) == ["0", "1"]
    for t in trials:  # each trial's processes saw its GPU only
        log = (tmp_path / t["log"]).read_text()
        assert f"CUDA_VISIBLE_DEVICES={t['gpus'][0]})" in log


def test_a_sweep_runs_every_trial_in_its_own_folders(demo_sweep):
    root = demo_sweep.root
    record = json.loads((root / "artifacts/demo-sweep/sweep.json").read_text())
    assert [t["experiment"] for t in record["trials"]] == SWEEP_TRIALS
    for exp in SWEEP_TRIALS:
        art = root / "artifacts" / exp
        assert (art / "trial.json").is_file() and (root / "runs" / exp / "train" / "results.csv").is_file()
        for fmt in ("pt", "onnx", "rknn"):
            assert json.loads((art / "metrics" / f"{fmt}.json").read_text())["sets"]["val"]["coco"]["AP50"] > 0.3
        cfg = json.loads((art / "train" / "manifest.json").read_text())["config"]
        assert cfg["experiment"] == exp
    seeds = {exp: json.loads((root / "artifacts" / exp / "train/manifest.json").read_text())["config"]["train"]
             for exp in SWEEP_TRIALS}
    assert [seeds[e]["seed"] for e in SWEEP_TRIALS] == [0, 1, 0, 1]
    assert [seeds[e]["imgsz"] for e in SWEEP_TRIALS] == [256, 256, 192, 192]


def test_a_killed_trial_fails_alone_and_the_sweep_says_so(demo_sweep):
    first, killed = demo_sweep.first, demo_sweep.killed
    assert first.returncode == 2 and "sweep] Error 1" in first.stdout, first.stdout[-3000:]  # the sweep's exit 1
    assert "Traceback" not in first.stdout, first.stdout[-3000:]
    trial = killed.removeprefix("demo-sweep-")
    table = first.stdout[first.stdout.rindex("sweep demo-sweep:"):]
    row = next(line for line in table.splitlines() if line.split()[:1] == [trial])
    assert "failed" in row and "fit (exit -9)" in row
    assert f"{trial} stopped at stage 'fit' (exit -9); its last log lines:" in table
    assert "3 done, 0 skipped (done before), 1 failed" in table


def test_a_rerun_skips_finished_trials_and_resumes_the_killed_one(demo_sweep):
    second, killed, root = demo_sweep.second, demo_sweep.killed, demo_sweep.root
    assert second.returncode == 0, second.stdout[-3000:] + second.stderr[-2000:]
    assert "1 done, 3 skipped (done before), 0 failed" in second.stdout
    trial = killed.removeprefix("demo-sweep-")
    logs = root / "artifacts/demo-sweep/logs"
    others = {f"{t.removeprefix('demo-sweep-')}.log" for t in SWEEP_TRIALS} - {f"{trial}.log"}
    assert len(others) == 3 and others <= set(demo_sweep.logs_after_first), demo_sweep.logs_after_first
    for name in others:  # the others did not run again (the sweep checks the dataset again each run)
        assert (logs / name).stat().st_size == demo_sweep.logs_after_first[name], name
    log = (logs / f"{trial}.log").read_text()
    assert f"resuming runs/{killed}/train after epoch 1 of 2" in log
    rows = (root / "runs" / killed / "train" / "results.csv").read_text().strip().splitlines()
    assert len(rows) == 1 + 2  # header, epoch 1 from before the kill, epoch 2 after the resume
