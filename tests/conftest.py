"""Fixtures and pytest hooks. Stages run against scratch project roots (PIPELINE_ROOT), never the
user's datasets/, artifacts/ or runs/. The helpers they use are in tests/helpers.py."""
import fcntl
import io
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from services.common import files
from tests.helpers import (CONVERT_PY, PhaseTimer, ROOT, SHARED_CITYPERSONS, SWEEP_TRIALS, SweepRun, TRAIN_VENV_INSTALLED, _kill_one_training, _pids_with, copy_dataset, demo_root, error_lines, failure, make, make_real_root, needs_convert_env, needs_make_venv, needs_real_citypersons, one_error, phase_time, pipeline_venv, require, run_module, stage_env)  # noqa: F401


# Under `make test` the tests run in groups, one group at a time on a pytest-xdist worker: the tests
# that read the demo training's root or rerun stages in it (demo-training), so that none of them runs
# beside one that changes it; the demo sweep and the tests that read it (demo-sweep), which starts
# from demo_run's untouched snapshot; every other file whole (its module fixtures then run once). The
# groups are handed out in this order, the longest first (as measured), so that the containers, the
# sweep and the other trainings run beside the demo training instead of after it, the longest files of
# the quick tier (`make test-fast`) start first rather than last, and the last to start are short: a
# long one last leaves the other core idle while it ends. Files not named here come after, in any order.
FIRST = ("demo-training", "test_containers.py", "test_yolo26.py", "demo-sweep", "test_proxy_study.py",
         "test_train.py", "test_promises_convert.py", "test_promises_sweep.py", "test_sweep.py",
         "test_gpu_benchmarks.py", "test_faults_more.py", "test_dataset_real.py", "test_promises_report.py",
         "test_dataset_bad_input.py", "test_coco_person.py", "test_faults.py", "test_promises_predict.py",
         "test_predict.py", "test_promises_moved_aside.py", "test_dataset_demo.py", "test_download.py",
         "test_report.py", "test_report_board.py", "test_promises_faults.py", "test_board_runtime.py",
         "test_evaluate.py", "test_run.py", "test_proxy.py", "test_make.py", "test_docs.py", "test_sweep_plan.py",
         "test_promises_docs.py", "test_convert.py", "test_promises_board.py")


def pytest_configure(config):
    """The controller's scratch folder, which its pytest-xdist workers inherit: the groups they
    collected (for the scheduler below) and the phases they timed (for the summary)."""
    if not os.environ.get("PYTEST_XDIST_WORKER"):
        os.environ["PIPELINE_TEST_SHARED"] = tempfile.mkdtemp(prefix="pipeline-tests-")


def pytest_collection_modifyitems(items):
    """Every test that needs the demo's dataset or training is marked `slow`, so `pytest -m "not slow
    and not containers"` is the quick tier. Each test's group is written down for the scheduler."""
    groups = {}
    for item in items:
        names = set(getattr(item, "fixturenames", ()))
        # two_fits: test_faults_more's own training (two `make fit` at once), which the quick tier's
        # promise (no training) leaves to `make test` as it does the demo's
        if names & {"demo_run", "demo_snapshot", "demo_sweep", "demo_dataset", "two_fits"}:
            item.add_marker(pytest.mark.slow)
        groups[item.nodeid] = ("demo-sweep" if "demo_sweep" in names else "demo-training" if "demo_run" in names
                               else item.path.name)
    rank = {group: i for i, group in enumerate(FIRST)}
    items.sort(key=lambda item: rank.get(groups[item.nodeid], len(FIRST)))
    shared = Path(os.environ["PIPELINE_TEST_SHARED"])
    files.atomic_write_json(shared / "groups.json", groups)  # every worker collects the same


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_make_scheduler(config, log):
    """`--dist loadscope` with the groups above as its scopes (pytest-xdist's own xdist_group marks are
    lost under pytest 9, whose node ids are no longer strings it can extend)."""
    if config.getvalue("dist") != "loadscope":
        return None
    from xdist.scheduler import LoadScopeScheduling

    class Groups(LoadScopeScheduling):
        groups: dict = {}

        def _split_scope(self, nodeid: str) -> str:
            if not self.groups:  # read once the workers have collected: scheduling starts after that
                self.groups = json.loads((Path(os.environ["PIPELINE_TEST_SHARED"]) / "groups.json").read_text())
            return self.groups[nodeid]

    return Groups(config, log)


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item):
    """The `requires` marks (tests/helpers.py needs()), before any fixture: a skip, or under `make
    test` (CI=1) a failure naming what is missing."""
    for mark in item.iter_markers("requires"):
        require(*mark.args)


# When each worker ran which test (the controller sees every report): the summary's timeline of groups,
# which shows what the suite's wall time waits on.
_RAN: list = []


def pytest_runtest_logreport(report):
    if not os.environ.get("PYTEST_XDIST_WORKER") and hasattr(report, "node"):
        _RAN.append((report.node.gateway.id, report.nodeid, report.start, report.stop))


def pytest_terminal_summary(terminalreporter):
    if os.environ.get("PYTEST_XDIST_WORKER"):
        return
    shared = Path(os.environ["PIPELINE_TEST_SHARED"])
    records = PhaseTimer.read(shared / "phases.jsonl")
    groups = json.loads((shared / "groups.json").read_text()) if (shared / "groups.json").is_file() else {}
    shutil.rmtree(shared, ignore_errors=True)
    if records:
        terminalreporter.section("phase timings")
        for r in records:
            terminalreporter.write_line(f"{r['seconds']:8.1f} s  {r['phase']}" if "phase" in r else r["note"])
    if _RAN and groups:
        terminalreporter.section("groups: worker, from, to (s after the first test began)")
        t0, spans = min(r[2] for r in _RAN), {}
        for worker, nodeid, start, stop in _RAN:  # a test's setup, call and teardown: one span, one test
            key = (worker, groups.get(nodeid, "?"))
            lo, hi, tests = spans.get(key, (start, stop, set()))
            spans[key] = (min(lo, start), max(hi, stop), tests | {nodeid})
        for (worker, group), (lo, hi, tests) in sorted(spans.items(), key=lambda kv: kv[1][0]):
            if hi - lo >= 10:
                terminalreporter.write_line(f"{worker}  {lo - t0:6.0f} {hi - t0:6.0f}  {group} ({len(tests)} tests)")


def make_demo_once() -> tuple[Path, subprocess.CompletedProcess]:
    """`make demo` once per session for every pytest-xdist worker (once_across_workers), its outcome
    recorded, a failure too: every worker then fails on the same output instead of running the
    chain again. Beside its root, a copy of it (snapshot/) that no test changes."""
    require(TRAIN_VENV_INSTALLED, f"{Path(sys.prefix) / '.installed'}: the demo chain runs in the .venv/train "
                                  f"that `make test` builds")

    def build(folder: Path) -> None:
        (folder / "root").mkdir()
        proc = make("demo", root=folder / "root", timeout=3600)
        if proc.returncode == 0:
            for d in ("datasets", "artifacts", "runs"):
                shutil.copytree(folder / "root" / d, folder / "snapshot" / d, symlinks=True)
        files.atomic_write_json(folder / "outcome.json", {"returncode": proc.returncode, "stdout": proc.stdout,
                                                          "stderr": proc.stderr})
    folder = once_across_workers("make-demo", build)
    r = json.loads((folder / "outcome.json").read_text())
    proc = subprocess.CompletedProcess(["make", "demo"], r["returncode"], r["stdout"], r["stderr"])
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return folder / "root", proc


@pytest.fixture(scope="session")
def demo_run():
    """`make demo` on a fresh project root (the demo download, the dataset, the training, the whole
    chain) and what it printed: for the tests that read its root as it is or rerun stages in it (the
    demo-training group)."""
    return make_demo_once()


@pytest.fixture(scope="session")
def demo_snapshot() -> Path:
    """A copy of the `make demo` root that no test changes: tests that copy the demo's dataset,
    artifacts or weights into a root of their own take them from here, in any group on any worker."""
    root, _ = make_demo_once()
    return root.parent / "snapshot"


def once_across_workers(name: str, build) -> Path:
    """`build(folder)` once per session for every pytest-xdist worker, into the session's scratch
    folder: the first worker to ask builds it under a lock the others wait on, then all read it. A
    failed build leaves no mark, so the next to ask tries again (and fails the same way)."""
    shared = Path(os.environ["PIPELINE_TEST_SHARED"])
    folder, done = shared / name, shared / f"{name}.done"
    with open(shared / f"{name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes, also if this worker dies
        if not done.is_file():
            shutil.rmtree(folder, ignore_errors=True)
            folder.mkdir()
            build(folder)
            done.touch()
    return folder


@pytest.fixture(scope="session")
def demo_dataset() -> Path:
    """`make dataset EXP=demo` on a fresh project root: the demo's dataset alone, for the tests that
    train or convert a model of their own on it (they need not wait for the demo training). Built once
    for all workers; tests take hard links of it (copy_dataset), never change it."""
    require(TRAIN_VENV_INSTALLED, f"{Path(sys.prefix) / '.installed'}: the demo chain runs in the .venv/train "
                                  f"that `make test` builds")

    def build(root: Path) -> None:
        proc = make("dataset", "EXP=demo", root=root, timeout=1200)
        assert proc.returncode == 0, failure(proc)
    return once_across_workers("demo-dataset", build)


@pytest.fixture(scope="session")
def placeholder_png() -> bytes:
    """A valid, empty 2048x1024 PNG, the size of a Cityscapes leftImg8bit image. One bit per pixel:
    the dataset stage reads every image's size from its header but decodes about 900 of them in full
    (selection, val, calibration), 15 ms each in RGB and 1 ms in 1-bit, per build."""
    from PIL import Image
    buf = io.BytesIO()
    Image.new("1", (2048, 1024)).save(buf, format="PNG")
    return buf.getvalue()


@pytest.fixture(scope="session")
def demo_raw() -> Path:
    """The default demo download, generated once per test session for all workers (tests copy it)."""
    from services.dataset import demo
    return once_across_workers("demo-raw", lambda folder: demo.generate(folder / "raw", seed=0)) / "raw"


@pytest.fixture(scope="session")
def demo_sweep(demo_snapshot, tmp_path_factory):
    """`make sweep SWEEP=demo-sweep` on local Ray: 2 variants x 2 seeds, each trial the whole chain,
    fine-tuned for 2 epochs from the demo's weights. One trial's training is killed with SIGKILL after
    its first epoch; the sweep goes on with the others, then runs again."""
    root = copy_dataset(demo_snapshot, tmp_path_factory.mktemp("demo-sweep"))
    # Fine-tuned gently: the demo's own lr0 (0.005, AdamW, no warmup) would unlearn much of it in 2 epochs.
    # Half the train images per epoch, 20 of the 100 calibration images (a list of its own, beside the
    # dataset, which stays the demo's: copies of the dataset carry it) and one analysis image: what is
    # checked is the sweep, not the numbers; nor are the plots.
    calib = (root / "datasets/demo/yolo/calib.txt").read_text().splitlines()[:20]
    (root / "datasets/demo/calib-20.txt").write_text("".join(line + "\n" for line in calib))
    args = (f"ARGS=train.model={demo_snapshot / 'artifacts/demo/weights/best.pt'} train.epochs=2 train.lr0=0.0005 "
            f"train.extra={{scale: 0.3, close_mosaic: 4, fraction: 0.5}} convert.calibration=datasets/demo/calib-20.txt "
            f"convert.analysis_images=1 train.plots=false")
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
