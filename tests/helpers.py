"""What the tests share: the project root, running stages and make as a user does, and their one-line
errors. Fixtures and pytest hooks live in conftest.py."""
import contextlib
import dataclasses
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import scipy.io


ROOT = Path(__file__).resolve().parents[1]


# The real CityPersons annotation files: beside the project in CI, absent on a user's machine.
SHARED_CITYPERSONS = ROOT.parent / "shared" / "data" / "citypersons"


needs_real_citypersons = pytest.mark.skipif(
    not (SHARED_CITYPERSONS / "anno_train.mat").is_file(),
    reason=f"real CityPersons annotations not found at {SHARED_CITYPERSONS}")


def pipeline_venv() -> Path:
    """The folder holding the environments `make` builds (train/, convert/, tools/): $PIPELINE_VENV
    (Make's VENV; whoever launches pytest sets it; relative to the project root), else the folder
    above the environment this pytest runs in."""
    venv = os.environ.get("PIPELINE_VENV")
    if not venv:
        return Path(sys.prefix).parent
    return Path(venv) if Path(venv).is_absolute() else ROOT / venv


# The convert environment's interpreter (rknn-toolkit2 lives there, not in the train environment).
CONVERT_PY = pipeline_venv() / "convert" / "bin" / "python"


needs_convert_env = pytest.mark.skipif(
    not CONVERT_PY.is_file(),
    reason=f"the convert environment's python {CONVERT_PY} does not exist (`make test` builds it; "
           f"set PIPELINE_VENV to the folder holding train/ and convert/)")


def stage_env(root: Path) -> dict:
    """The environment a user's shell gives a stage, with outputs under `root`. Without pytest's
    marker: ultralytics switches TensorBoard logging off when it thinks it runs under pytest."""
    env = {k: v for k, v in os.environ.items() if k != "PYTEST_CURRENT_TEST"}
    return {**env, "PIPELINE_ROOT": str(root)}


def run_module(module: str, args, root: Path, timeout=900, env=None) -> subprocess.CompletedProcess:
    """`python -m services.<module> ...` as a user runs it, with outputs under `root`."""
    return subprocess.run([sys.executable, "-m", f"services.{module}", *args], cwd=ROOT,
                          env={**stage_env(root), **(env or {})}, capture_output=True, text=True,
                          timeout=timeout)


def make(*args, root: Path, timeout=1800, env=None) -> subprocess.CompletedProcess:
    """`make ...` in the project, with the test session's environments and outputs under `root`."""
    return subprocess.run(["make", "--no-print-directory", f"VENV={pipeline_venv()}", *args],
                          cwd=ROOT, env={**stage_env(root), **(env or {}), "PIPELINE_ROOT": str(root)},
                          capture_output=True, text=True, timeout=timeout)


class PhaseTimer:
    """`with phase_time("what"):` records how long a phase took; the session prints them all at the
    end (the live container test's phases: image builds, the chain, ...)."""

    def __init__(self):
        self.times, self.notes = [], []

    @contextlib.contextmanager
    def __call__(self, what: str):
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self.times.append((what, time.perf_counter() - t0))


phase_time = PhaseTimer()


# Make tests use the environment `make test` built; elsewhere (a bare pytest) they skip.
needs_make_venv = pytest.mark.skipif(not (Path(sys.prefix) / ".installed").is_file(),
                                     reason="Make tests run under `make test` (they use its .venv/train)")


def copy_dataset(src_root: Path, dst_root: Path, name: str = "demo") -> Path:
    """Give a scratch root the demo dataset of another (hard links, like the stage itself)."""
    shutil.copytree(src_root / "datasets" / name, dst_root / "datasets" / name, copy_function=os.link)
    return dst_root


def error_lines(proc: subprocess.CompletedProcess) -> list[str]:
    return [line for line in proc.stderr.splitlines() if "error:" in line]


def one_error(proc: subprocess.CompletedProcess) -> str:
    """Bad input's contract: exit 2, no traceback, exactly one error line; that line."""
    lines = error_lines(proc)
    assert proc.returncode == 2 and len(lines) == 1 and "Traceback" not in proc.stderr, \
        proc.stdout[-2000:] + proc.stderr[-2000:]
    return lines[0]


def make_real_root(root: Path, png: bytes, shared: Path = SHARED_CITYPERSONS) -> Path:
    """A project root whose datasets/citypersons/raw/ holds the real .mat files and one placeholder
    PNG per annotated image, in the Cityscapes layout."""
    raw = root / "datasets" / "citypersons" / "raw"
    raw.mkdir(parents=True)
    for split in ("train", "val"):
        shutil.copyfile(shared / f"anno_{split}.mat", raw / f"anno_{split}.mat")
        for cell in scipy.io.loadmat(raw / f"anno_{split}.mat")[f"anno_{split}_aligned"].ravel():
            s = cell[0, 0]
            folder = raw / "leftImg8bit" / split / str(s["cityname"][0])
            folder.mkdir(parents=True, exist_ok=True)
            (folder / str(s["im_name"][0])).write_bytes(png)
    return root


def demo_root(tmp_path: Path, demo_raw: Path) -> Path:
    """A project root with its own copy of the demo download (tests may damage it)."""
    shutil.copytree(demo_raw, tmp_path / "datasets" / "demo" / "raw")
    return tmp_path


@dataclasses.dataclass
class SweepRun:
    root: Path
    name: str
    first: subprocess.CompletedProcess   # the run during which one trial's training was killed
    second: subprocess.CompletedProcess  # the rerun
    killed: str                          # that trial's experiment name
    logs_after_first: dict               # trial log -> its size after the first run


SWEEP_TRIALS = [f"demo-sweep-{v}-s{s}" for v in ("imgsz256", "imgsz192") for s in (0, 1)]


def _kill_one_training(root: Path, proc: subprocess.Popen) -> str:
    """SIGKILL the fit stage of the first trial that has a checkpoint of its first epoch, mid-run."""
    deadline = time.time() + 3000
    while proc.poll() is None and time.time() < deadline:
        for exp in SWEEP_TRIALS:
            run = root / "runs" / exp / "train"
            rows = (run / "results.csv").read_text().count("\n") - 1 if (run / "results.csv").is_file() else 0
            if (run / "weights" / "last.pt").is_file() and rows == 1:
                for pid in _pids_with(["services.fit", "--experiment", exp]):
                    os.kill(pid, signal.SIGKILL)
                    return exp
        time.sleep(0.3)
    raise AssertionError("no trial's training reached its first checkpoint while the sweep ran")


def _pids_with(words: list) -> list:
    pids = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            argv = cmdline.read_bytes().split(b"\0")
        except OSError:
            continue
        if all(w.encode() in argv for w in words):
            pids.append(int(cmdline.parent.name))
    return pids
