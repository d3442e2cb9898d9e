"""The benchmarks kept ready for a lent GPU machine run here on the CPU, as smoke tests: they must
work the day a GPU is there for a few minutes. Their figures are not judged here."""
import os
import shutil
import subprocess
import sys

import pytest

from tests.helpers import ROOT, needs_make_venv, needs_real_citypersons, pipeline_venv


@needs_make_venv
def test_gpu_doctor_runs_the_gpu_checks_on_a_host_without_docker():
    env = {**os.environ, "VENV": str(pipeline_venv())}
    cpu = subprocess.run(["bash", "benchmarks/gpu_doctor.sh", "--cpu", "demo"], cwd=ROOT, env=env,
                         capture_output=True, text=True, timeout=300)
    assert cpu.returncode == 0, cpu.stdout + cpu.stderr
    lines = cpu.stdout.splitlines()
    assert any(line.startswith("ok    train env") for line in lines)
    assert any(line.startswith("ok    torch") and "the train environment" in line for line in lines)
    assert lines[-1].startswith("doctor: ready")
    if shutil.which("nvidia-smi") is None:  # asked for the GPU where there is none: said, and exit 1
        gpu = subprocess.run(["bash", "benchmarks/gpu_doctor.sh", "demo"], cwd=ROOT, env=env,
                             capture_output=True, text=True, timeout=300)
        assert gpu.returncode == 1
        assert any(line.startswith("FAIL  nvidia driver") and "install the NVIDIA driver" in line
                   for line in gpu.stdout.splitlines())


@pytest.mark.slow
def test_gpu_train_smoke_test_on_the_cpu():
    proc = subprocess.run([sys.executable, "benchmarks/gpu_train.py", "--cpu"], cwd=ROOT, capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    print(proc.stdout[-1500:])
    rows = [line.split() for line in proc.stdout.splitlines() if line.startswith(("stage vs bare", "grid"))]
    assert len(rows) == 2
    stage, bare = (float(x) for x in rows[0][6:9:2])  # "<stage> / <bare>" images/s
    assert stage > 0 and bare > 0 and float(rows[0][-1]) == pytest.approx(stage / bare, rel=0.01)
    assert float(rows[1][4]) > 0 and rows[1][5] == "n/a" and rows[1][6].isdigit()  # images/s, no GPU, wait %
    assert "not judged on the CPU" in proc.stdout


@pytest.mark.slow
@needs_real_citypersons
def test_input_pipeline_benchmark_measures_every_cache_mode():
    proc = subprocess.run([sys.executable, "benchmarks/input_pipeline.py", "--images", "24"], cwd=ROOT,
                          capture_output=True, text=True, timeout=600)
    assert "Traceback" not in proc.stderr, proc.stderr[-2000:]
    modes = [line.split()[0] for line in proc.stdout.splitlines() if line.split()[:1] in (["none"], ["disk"], ["ram"])]
    assert modes == ["none", "disk", "ram"] and "bar: the default (disk)" in proc.stdout
    # 24 frames do not judge the bar, but the exit code must be the verdict it prints: 0 ok, 1 missed
    rows = {line.split()[0]: line.split() for line in proc.stdout.splitlines() if line.split()[:1] in (["none"], ["disk"])}
    assert float(rows["disk"][3]) / float(rows["none"][3]) == pytest.approx(float(rows["disk"][4]), rel=0.05)
    assert rows["none"][4] == "1.00"  # the table's `x none`: images/s per worker over none's
    (bar,) = [line for line in proc.stdout.splitlines() if line.startswith("bar: the default (disk)")]
    shown, verdict = bar.split()[-2:]
    assert shown == f"{rows['disk'][4]}x", (bar, rows)
    assert (proc.returncode, verdict) == ((0, "ok") if float(shown.rstrip("x")) >= 4.0 else (1, "MISSED")), \
        (proc.returncode, bar, proc.stderr[-2000:])
