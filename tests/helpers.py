"""What the tests share: the project root, running stages and make as a user does, and their one-line
errors. Fixtures and pytest hooks live in conftest.py."""
import contextlib
import dataclasses
import json
import os
import re
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


# ------------------------------------------------------------------------------ what a test needs
def under_ci() -> bool:
    """`make test` (the runner sets CI=1 for the whole suite), or a CI service (CI=true)."""
    return os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no")


def require(condition, what: str) -> None:
    """Something the suite itself installs or builds (a tool such as pdflatex, chattr, chromium or
    podman; an environment such as .venv/train or the convert one): without it the test skips, except
    under `make test` (CI=1), where a missing one fails the test in one line naming it, so that no
    tier is hidden. What a machine cannot have (a GPU, ../shared on a user's clone, mounting where
    it is not allowed) is a plain pytest.skip instead, and `make test -rs` lists those at the end."""
    if condition:
        return
    if under_ci():
        pytest.fail(f"missing under `make test`: {what}", pytrace=False)
    pytest.skip(f"missing: {what}")


def needs(condition, what: str) -> pytest.MarkDecorator:
    """require() as a mark, for a test or a module (pytestmark); checked before any fixture is set up
    (tests/conftest.py pytest_runtest_setup)."""
    return pytest.mark.requires(bool(condition), what)


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


needs_convert_env = needs(
    CONVERT_PY.is_file(),
    f"the convert environment's python {CONVERT_PY} (`make test` builds it; set PIPELINE_VENV to the folder "
    f"holding train/ and convert/)")


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
    end (the live container test's phases: image builds, the chain, ...). The records go to a file
    in PIPELINE_TEST_SHARED (conftest.py sets it), so that phases timed in a pytest-xdist worker
    reach the summary the controller prints."""

    @staticmethod
    def _write(record: dict) -> None:
        shared = os.environ.get("PIPELINE_TEST_SHARED")
        if shared:
            with open(Path(shared) / "phases.jsonl", "a") as f:
                f.write(json.dumps(record) + "\n")

    @contextlib.contextmanager
    def __call__(self, what: str):
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self._write({"phase": what, "seconds": time.perf_counter() - t0})

    def note(self, text: str) -> None:
        self._write({"note": text})

    @staticmethod
    def read(path: Path) -> list:
        return [json.loads(line) for line in path.read_text().splitlines()] if path.is_file() else []


phase_time = PhaseTimer()


# Make tests use the environment `make test` built; elsewhere (a bare pytest) they skip.
TRAIN_VENV_INSTALLED = (Path(sys.prefix) / ".installed").is_file()
needs_make_venv = needs(TRAIN_VENV_INSTALLED, f"{Path(sys.prefix) / '.installed'}: this pytest does not run in "
                                              f"the .venv/train that `make test` builds (Make tests use it)")


def copy_dataset(src_root: Path, dst_root: Path, name: str = "demo") -> Path:
    """Give a scratch root the demo dataset of another (hard links, like the stage itself)."""
    shutil.copytree(src_root / "datasets" / name, dst_root / "datasets" / name, copy_function=os.link)
    return dst_root


def error_lines(proc: subprocess.CompletedProcess) -> list[str]:
    """The lines of stderr that mention an error (no check: refusals are checked by refusal())."""
    return [line for line in proc.stderr.splitlines() if "error:" in line]


# `<who>: error: <what is wrong and the fix>` (services/common/log.py user_errors, the runner's own),
# or the board runtime's `error: ...` (services/board/detect.py, which has no stage name to give).
ERROR_LINE = re.compile(r"^(?:(?P<who>[\w.-]+): )?error: \S")
# What make adds when a recipe fails: the recipe's own exit code.
MAKE_FAILED = re.compile(r"^make(?:\[\d+\])?: \*\*\* \[[^\]]*\] Error (?P<code>\d+)$")
# A tqdm progress bar ("val px:  95%|█████▌| 95/100 [00:00<00:00, 189img/s]"): redrawn in place with
# carriage returns and erased when done (leave=False), so no line a user is left to read.
PROGRESS = re.compile(r"\d%\||\[\d+:\d\d(?:<|, )")


def failure(proc: subprocess.CompletedProcess, tail: int = 3000) -> str:
    """A failed command told for an assertion message: its error and traceback lines first (a log's
    tail alone is often a build's pip output), then the tails of stdout and stderr."""
    both = (proc.stdout or "") + "\n" + (proc.stderr or "")
    telling = [line for line in re.split(r"[\r\n]", both)
               if ERROR_LINE.match(line.strip()) or "Error" in line or "Traceback" in line or "error:" in line]
    return (f"exit {proc.returncode}; the lines that say why:\n" + "\n".join(telling[-40:])
            + f"\n--- stdout tail ---\n{(proc.stdout or '')[-tail:]}\n--- stderr tail ---\n{(proc.stderr or '')[-tail:]}")


def stderr_lines(proc: subprocess.CompletedProcess) -> list[str]:
    """The lines stderr leaves on a terminal: split at newlines and carriage returns, without progress
    bars and the blanks that erase them."""
    return [seg for seg in re.split(r"[\r\n]", proc.stderr) if seg.strip() and not PROGRESS.search(seg)]


def refusal(proc: subprocess.CompletedProcess, count: int = 1, who: str | None = None,
            usage: bool = False) -> list[str]:
    """A refusal as the user sees it (services/common/log.py user_errors): exit 2, no traceback, and
    stderr holds exactly `count` lines, each `<who>: error: ...` (one per problem: one line, unless a
    stage lists several missing files; progress bars, erased as they go, are no lines). Through make, stderr ends with make's own `make: *** [...]
    Error 2`, which says the recipe itself exited 2 (make exits 2 for any failed recipe, a crash too).
    usage=True: a command-line mistake caught by argparse, whose `usage: ...` block (and nothing else)
    comes above the error line. Returns the error lines."""
    shown = f"exit {proc.returncode}\nstdout: {proc.stdout[-2000:]}\nstderr: {proc.stderr[-3000:]}"
    assert "Traceback" not in proc.stderr and "Traceback" not in proc.stdout, shown
    assert proc.returncode == 2, shown
    # warnings said on the way (a failed trial, a setting ignored) are lines of their own, not the refusal
    lines = [line for line in stderr_lines(proc) if not re.match(r"^\S+: warning: ", line)]
    made = MAKE_FAILED.match(lines[-1]) if lines else None
    if made:
        assert made["code"] == "2", f"make says the recipe exited {made['code']}, not 2 (a refusal)\n{shown}"
        lines = lines[:-1]
    if usage:
        assert lines and lines[0].startswith("usage: "), f"expected argparse's usage above the error\n{shown}"
        lines = [line for line in lines[1:] if not line.startswith(" ")]  # its continuation lines are indented
    assert len(lines) == count and all(ERROR_LINE.match(line) for line in lines), \
        f"expected {count} error line(s) and nothing else on stderr\n{shown}"
    if who is not None:
        assert all(ERROR_LINE.match(line)["who"] == who for line in lines), f"expected '{who}: error: ...'\n{shown}"
    return lines


def one_error(proc: subprocess.CompletedProcess, who: str | None = None, usage: bool = False) -> str:
    """The stage's one-line error (refusal() with one line): exit 2, no traceback, exactly one line on
    stderr, `<who>: error: ...`; returns that line."""
    return refusal(proc, 1, who, usage)[0]


def completed(code: int, captured) -> subprocess.CompletedProcess:
    """A main() run in this process as a CompletedProcess, for refusal(): its return code and what
    capsys captured (capsys.readouterr())."""
    return subprocess.CompletedProcess([], code, captured.out, captured.err)


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


NETGUARD = ROOT / "tests" / "netguard"


@dataclasses.dataclass
class NetGuard:
    """tests/netguard in a stage's environment: every network attempt fails and is logged, and every
    process that loaded the guard writes its command line to a list, so a test proves the guard ran
    in the stage before it trusts an empty log of attempts."""
    folder: Path

    @property
    def log(self) -> Path:
        return self.folder / "network-attempts.log"

    @property
    def loaded(self) -> Path:
        return self.folder / "netguard-loaded.txt"

    def env(self, before=()) -> dict:
        """PYTHONPATH (with `before` ahead of the guard: a sitecustomize of the test's own that runs the
        guard's after itself) and the guard's two files."""
        return {"PYTHONPATH": os.pathsep.join([*map(str, before), str(NETGUARD)]), "NETGUARD_LOG": str(self.log),
                "NETGUARD_LOADED": str(self.loaded)}

    def processes(self) -> list[str]:
        return self.loaded.read_text().splitlines() if self.loaded.is_file() else []

    def assert_no_network(self, *modules: str) -> None:
        """The guard ran in a `python -m services.<module>` process for each module, and nothing tried
        the network."""
        for module in modules:
            assert any(f" -m services.{module}" in p for p in self.processes()), \
                f"tests/netguard did not load in services.{module}; processes that loaded it: {self.processes()}"
        assert not self.log.exists(), f"network attempts: {self.log.read_text()}"
