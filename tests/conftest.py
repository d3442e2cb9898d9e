"""Fixtures and pytest hooks. Stages run against scratch project roots (PIPELINE_ROOT), never the
user's datasets/, artifacts/ or runs/. The helpers they use are in tests/helpers.py."""
import io
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers import (CONVERT_PY, PhaseTimer, ROOT, SHARED_CITYPERSONS, SWEEP_TRIALS, SweepRun, TRAIN_VENV_INSTALLED, _kill_one_training, _pids_with, copy_dataset, demo_root, error_lines, make, make_real_root, needs_convert_env, needs_make_venv, needs_real_citypersons, one_error, phase_time, pipeline_venv, require, run_module, stage_env)  # noqa: F401


def pytest_collection_modifyitems(items):
    """Every test that needs the shared demo training (the `demo_run` fixture, directly or through
    another fixture) is marked `slow`, so `pytest -m "not slow and not containers"` is the quick tier.
    The live container tests run last, so the demo training the other tests share gets the machine
    before ~14 GB of image builds have gone through it."""
    for item in items:
        if {"demo_run", "demo_sweep"} & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.slow)
    items.sort(key=lambda item: item.path.name == "test_containers.py")


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item):
    """The `requires` marks (tests/helpers.py needs()), before any fixture: a skip, or under `make
    test` (CI=1) a failure naming what is missing."""
    for mark in item.iter_markers("requires"):
        require(*mark.args)


def pytest_terminal_summary(terminalreporter):
    if phase_time.times or phase_time.notes:
        terminalreporter.section("phase timings")
        for what, seconds in phase_time.times:
            terminalreporter.write_line(f"{seconds:8.1f} s  {what}")
        for note in phase_time.notes:
            terminalreporter.write_line(note)


@pytest.fixture(scope="session")
def demo_run(tmp_path_factory):
    """`make demo` once per session on a fresh project root: the demo download, the dataset, the
    training. Every test that needs a trained demo model shares this one."""
    require(TRAIN_VENV_INSTALLED, f"{Path(sys.prefix) / '.installed'}: the demo chain runs in the .venv/train "
                                  f"that `make test` builds")
    root = tmp_path_factory.mktemp("make-demo")
    proc = make("demo", root=root, timeout=3600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return root, proc


@pytest.fixture(scope="session")
def placeholder_png() -> bytes:
    """A valid, mostly empty 2048x1024 PNG, the size of a Cityscapes leftImg8bit image."""
    from PIL import Image
    buf = io.BytesIO()
    Image.new("RGB", (2048, 1024)).save(buf, format="PNG")
    return buf.getvalue()


@pytest.fixture(scope="session")
def demo_raw(tmp_path_factory) -> Path:
    """The default demo download, generated once per test session."""
    from services.dataset import demo
    out = tmp_path_factory.mktemp("demo-raw") / "raw"
    demo.generate(out, seed=0)
    return out


@pytest.fixture(scope="session")
def demo_sweep(demo_run, tmp_path_factory):
    """`make sweep SWEEP=demo-sweep` on local Ray: 2 variants x 2 seeds, each trial the whole chain,
    fine-tuned for 2 epochs from the demo's weights. One trial's training is killed with SIGKILL after
    its first epoch; the sweep goes on with the others, then runs again."""
    root = copy_dataset(demo_run[0], tmp_path_factory.mktemp("demo-sweep"))
    # Fine-tuned gently: the demo's own lr0 (0.005, AdamW, no warmup) would unlearn much of it in 2 epochs.
    args = f"ARGS=train.model={demo_run[0] / 'artifacts/demo/weights/best.pt'} train.epochs=2 train.lr0=0.0005"
    env = {**stage_env(root), "PIPELINE_ROOT": str(root)}
    cmd = ["make", "--no-print-directory", f"VENV={pipeline_venv()}", "sweep", "SWEEP=demo-sweep", args]
    out = root / "first-run.log"
    with out.open("w") as log:
        proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, text=True)
        killed = _kill_one_training(root, proc)
        code = proc.wait(timeout=3600)
    first = subprocess.CompletedProcess(cmd, code, out.read_text(), "")
    sizes = {p.name: p.stat().st_size for p in (root / "artifacts/demo-sweep/logs").glob("*.log")}
    second = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=3600)
    return SweepRun(root, "demo-sweep", first, second, killed, sizes)
