"""A second hostile week (issue 22), one section per class of fault, each with at least two members
(at least one the issue does not name): the exit code, the one line, and the file tree before and
after (nothing lost, nothing left, no *.old-* unless something differed). Real stages, real
ultralytics, real TensorBoard ports, real tmpfs mounts (skipped where mounting is not allowed)."""
import dataclasses
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
import scipy.io

from tests.helpers import (CONVERT_PY, ROOT, copy_dataset, demo_root, one_error, pipeline_venv, run_module, stage_env)
from tests.test_faults import aside, copy_run, outputs, temps, tree

DEMO = str(ROOT / "configs" / "demo.yaml")
# a training of seconds (one epoch of a quarter of the train images): what is tested is around it
TINY = ["train.epochs=1", "train.imgsz=64", "train.plots=false", "train.extra={fraction: 0.25}"]
BUSY = (r"(\w+): error: artifacts/demo is in use by another run \((\w+), pid (\d+) on (\S+), since \S+Z\); wait for "
        r"it to finish and run again, or stop it \(`kill \3` on \4\)")


def locks(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob(".lock"))


def make_cmd(*args) -> list:
    return ["make", "--no-print-directory", f"VENV={pipeline_venv()}", *args]


def user_env(root: Path, **extra) -> dict:
    """A user's shell: outputs under root, and no YOLO_CONFIG_DIR (the test process's own import of
    `services` set one; a user's shell has none)."""
    env = {k: v for k, v in stage_env(root).items() if k != "YOLO_CONFIG_DIR"}
    return {**env, **extra}


def start(module: str, root: Path, *args, python=sys.executable, out: Path | None = None) -> subprocess.Popen:
    sink = out.open("w") if out else subprocess.DEVNULL
    return subprocess.Popen([str(python), "-m", f"services.{module}", "--config", DEMO, *args], cwd=ROOT,
                            env=stage_env(root), stdout=sink, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)


def wait_for_holder(path: Path, proc: subprocess.Popen, timeout=120) -> dict:
    """The holder record a stage writes into a lock file once it holds it."""
    deadline = time.time() + timeout
    while time.time() < deadline and proc.poll() is None:
        try:
            return json.loads(path.read_text())
        except (OSError, ValueError):
            time.sleep(0.05)
    raise AssertionError(f"{path} never named its holder (the stage ended with {proc.poll()})")


def without_progress(proc: subprocess.CompletedProcess) -> subprocess.CompletedProcess:
    """A failure in the middle of the work: tqdm's bar (which erases itself on a terminal, but not in a
    pipe) stands above the error line; what is checked is the rest."""
    bar = re.compile(r"^\s*[\w ]+:\s+\d+%\|.*$|^\s*$")
    kept = [line for line in proc.stderr.replace("\r", "\n").splitlines() if not bar.match(line)]
    return subprocess.CompletedProcess(proc.args, proc.returncode, proc.stdout, "\n".join(kept) + "\n")


@contextmanager
def tmpfs(at: Path, **options):
    """A real tmpfs mounted at `at` (its contents hidden meanwhile), unmounted afterwards."""
    at.mkdir(parents=True, exist_ok=True)
    opts = ",".join(f"{k}={v}" for k, v in options.items())
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", opts, "tmpfs", str(at)], capture_output=True, text=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({mounted.stderr.strip() or 'mount failed'}); CI runs it as root")
    try:
        yield at
    finally:
        subprocess.run(["umount", "-l", str(at)], capture_output=True)


@contextmanager
def read_only(folder: Path):
    """`folder` on a read-only bind mount of itself: a read-only file system, as on a finished share."""
    bound = subprocess.run(["mount", "--bind", str(folder), str(folder)], capture_output=True, text=True)
    if bound.returncode != 0:
        pytest.skip(f"cannot bind-mount here ({bound.stderr.strip()})")
    try:
        if subprocess.run(["mount", "-o", "remount,ro,bind", str(folder)], capture_output=True).returncode != 0:
            pytest.skip("cannot remount read-only here")
        yield folder
    finally:
        subprocess.run(["umount", "-l", str(folder)], capture_output=True)


# 1. one run at a time per experiment ---------------------------------------------------------------
@dataclasses.dataclass
class TwoFits:
    root: Path
    before: dict
    runs: list  # (exit code, seconds to end, stdout, stderr) per `make fit`


@pytest.fixture(scope="module")
def two_fits(tmp_path_factory, demo_raw) -> TwoFits:
    """`make fit EXP=demo FRESH=1` twice at once, as the issue's user did, on a fresh demo dataset."""
    root = demo_root(tmp_path_factory.mktemp("two-fits"), demo_raw)
    assert run_module("dataset", ["--config", DEMO], root).returncode == 0
    before = outputs(root)
    cmd = make_cmd("fit", "EXP=demo", "FRESH=1", "RUNNER=local", f"ARGS={' '.join(TINY)}")
    logs = [(root.parent / f"fit{i}.out", root.parent / f"fit{i}.err") for i in range(2)]
    t0, procs = time.time(), []
    for out, err in logs:
        procs.append(subprocess.Popen(cmd, cwd=ROOT, env={**stage_env(root), "PIPELINE_ROOT": str(root)},
                                      stdout=out.open("w"), stderr=err.open("w")))
    ended = [None, None]
    while None in ended and time.time() - t0 < 900:
        for i, p in enumerate(procs):
            if ended[i] is None and p.poll() is not None:
                ended[i] = time.time() - t0
        time.sleep(0.1)
    runs = [(p.wait(timeout=60), ended[i], logs[i][0].read_text(), logs[i][1].read_text()) for i, p in enumerate(procs)]
    return TwoFits(root, before, runs)


def test_two_fits_at_once_train_once(two_fits):
    root = two_fits.root
    (won,), (lost,) = [r for r in two_fits.runs if r[0] == 0], [r for r in two_fits.runs if r[0] != 0]
    assert lost[0] == 2 and lost[1] < won[1] and lost[1] < 60, (lost, won[1])  # refused at once, while it trained
    lines = [line for line in lost[3].splitlines() if "error:" in line]
    assert len(lines) == 1 and "Traceback" not in lost[3], lost[3]
    m = re.fullmatch(BUSY + r"; the lock frees itself when that run ends, however it ends", lines[0])
    assert m and m.group(1) == m.group(2) == "fit", lines[0]
    # the results are those of one run: one epoch, one attempt, one event file, nothing moved aside
    run = root / "runs" / "demo" / "train"
    rows = (run / "results.csv").read_text().strip().splitlines()[1:]
    assert [int(float(r.split(",")[0])) for r in rows] == [1]
    assert len(json.loads((run / "stage.json").read_text())["attempts"]) == 1
    assert len(list(run.glob("events.out.tfevents.*"))) == 1
    assert json.loads((root / "artifacts/demo/train/manifest.json").read_text())["epochs_completed"] == 1
    assert sorted(p.name for p in (root / "runs" / "demo").iterdir()) == ["train"]
    assert not aside(root) and not temps(root) and not locks(root)
    ours = lambda t: {k: v for k, v in t.items() if not k.endswith("labels.cache")}  # noqa: E731 - ultralytics' own
    assert ours(outputs(root)["datasets"]) == ours(two_fits.before["datasets"])


def test_a_lock_left_by_a_killed_run_is_taken_over(two_fits, tmp_path):
    root = copy_run(two_fits.root, tmp_path / "root")
    lock = root / "artifacts" / "demo" / ".lock"
    proc = start("export", root, *TINY)
    holder = wait_for_holder(lock, proc)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert holder["pid"] == proc.pid and holder["stage"] == "export" and lock.is_file()  # left behind
    # the next run of the experiment, whichever stage: here its up-to-date training, so what it does is the take-over
    rerun = run_module("fit", ["--config", DEMO, *TINY], root)
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    assert f"took over artifacts/demo/.lock from a run that is gone (export, pid {proc.pid} on " in rerun.stdout
    assert "fit: runs/demo/train is finished and up to date" in rerun.stdout
    assert not locks(root) and not temps(root) and not aside(root)


def test_dataset_stages_of_two_experiments_take_turns_on_their_dataset(tmp_path):
    """Not in the issue: two experiments (a sweep's trials) share datasets/demo. The second waits
    for the first's build (the demo download generated, then converted: seconds) and finds it up to
    date: one build, nothing moved aside."""
    root = tmp_path
    first = start("dataset", root, "--experiment", "one", out=tmp_path / "one.log")
    holder = wait_for_holder(root / "datasets" / "demo" / ".lock", first)
    second = run_module("dataset", ["--config", DEMO, "--experiment", "two"], root)
    assert first.wait(timeout=600) == 0 and second.returncode == 0, second.stderr[-2000:]
    assert f"waiting for datasets/demo: dataset, pid {holder['pid']} on" in second.stdout
    assert "datasets/demo/yolo is up to date" in second.stdout
    assert not aside(root) and not temps(root) and not locks(root)
    assert not list((root / "artifacts").glob("*/"))  # the experiments' lock folders went with their locks


def test_read_only_work_is_not_blocked_by_a_writer(two_fits, tmp_path):
    root = copy_run(two_fits.root, tmp_path / "root")
    holder = subprocess.Popen([sys.executable, "-c", "import sys, time; from pathlib import Path; "
                               "from services.common import lock\nwith lock.held(Path(sys.argv[1]), 'fit'):\n"
                               "    print('held', flush=True); time.sleep(600)", str(root / "artifacts" / "demo")],
                              cwd=ROOT, env=stage_env(root), stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        image = sorted((root / "datasets/demo/yolo/val/images").glob("*.png"))[0]
        t0 = time.time()
        seen = run_module("predict", ["--config", DEMO, "--source", str(image), *TINY], root)
        assert seen.returncode == 0 and time.time() - t0 < 120, seen.stderr[-2000:]
        assert "in use" not in seen.stdout + seen.stderr
        refused = one_error(run_module("export", ["--config", DEMO, *TINY], root))  # a writer is refused
        assert re.match(BUSY, refused) and f"pid {holder.pid} on" in refused
    finally:
        holder.kill()
        holder.wait()
    assert (root / "artifacts/demo/predict/pt/detections.json").is_file() and not temps(root)


# 2. one boundary for every input format -------------------------------------------------------------
def mat_cells(split_file: Path, key: str, edit) -> dict:
    """The demo's annotation records with `edit(record dict) -> dict` applied, as a .mat variable."""
    cells = scipy.io.loadmat(split_file)[key].ravel()
    out = np.empty((1, len(cells)), dtype=object)
    for i, cell in enumerate(cells):
        fields = edit({name: cell[0, 0][name] for name in cell[0, 0].dtype.names})
        s = np.empty((1, 1), dtype=[(name, "O") for name in fields])
        for name, value in fields.items():
            s[0, 0][name] = value
        out[0, i] = s
    return {key: out}


@pytest.mark.parametrize("edit, expected", [
    # the issue's: the right variable, records without bbs (scipy: "no field of name bbs")
    (lambda r: {k: v for k, v in r.items() if k != "bbs"}, "anno_train_aligned[0] has no field bbs"),
    # not in the issue: boxes of 7 numbers instead of 10
    (lambda r: {**r, "bbs": np.zeros((2, 7), dtype=np.uint16)}, "anno_train_aligned[0] field bbs has shape (2, 7)"),
    # nor this: an image name that is a number
    (lambda r: {**r, "im_name": np.array([[3.0]])}, "anno_train_aligned[0] field im_name is not one text"),
])
def test_annotations_of_the_wrong_structure_are_one_line(tmp_path, demo_raw, edit, expected):
    root = demo_root(tmp_path, demo_raw)
    mat = root / "datasets/demo/raw/anno_train.mat"
    scipy.io.savemat(mat, mat_cells(mat, "anno_train_aligned", edit))
    before = outputs(root)
    line = one_error(run_module("dataset", ["--config", DEMO], root))
    assert line.startswith("dataset: error: datasets/demo/raw/anno_train.mat: ") and expected in line, line
    assert "not the CityPersons train annotation file" in line and "github.com/cvgroup-njust/CityPersons" in line
    assert outputs(root) == before and not temps(root) and not locks(root)


def test_the_proxy_reads_its_annotations_through_the_same_boundary(tmp_path, demo_raw):
    """Not in the issue: the CityPersons-scale proxy's source .mat, with records of the wrong shape."""
    source = tmp_path / "annotations"
    source.mkdir()
    shutil.copyfile(demo_raw / "anno_val.mat", source / "anno_val.mat")
    scipy.io.savemat(source / "anno_train.mat", mat_cells(demo_raw / "anno_train.mat", "anno_train_aligned",
                                                          lambda r: {**r, "bbs": np.array([["x"] * 10])}))
    before = tree(tmp_path)
    line = one_error(run_module("dataset", ["proxy", "--annotations", str(source), "--out", str(tmp_path / "proxy"),
                                            "--train", "2", "--val", "2"], tmp_path))
    assert "anno_train.mat: anno_train_aligned[0] field bbs holds <U1 values, not numbers" in line, line
    assert tree(tmp_path) == before


def test_a_yaml_syntax_error_names_line_and_column(tmp_path):
    config = tmp_path / "mine.yaml"
    config.write_text("dataset:\n  name: demo\n  positives: [pedestrian, rider\ntrain:\n  epochs: 2\n")
    line = one_error(run_module("fit", ["--config", str(config)], tmp_path))
    assert line == (f"fit: error: {config} is not valid YAML: expected ',' or ']', but got ':' at line 4, column 6 "
                    f"(while parsing a flow sequence that starts at line 3, column 14); fix the file there"), line
    sweep = tmp_path / "bad-sweep.yaml"  # and a sweep file, through the same boundary
    sweep.write_text("base: demo\nvariants:\n  a: [train.epochs=2\n")
    line = one_error(run_module("sweep", [str(sweep)], tmp_path, timeout=120))
    assert "bad-sweep.yaml is not valid YAML: " in line and "that starts at line 3, column 6" in line, line
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad-sweep.yaml", "mine.yaml"]


def test_damaged_json_of_an_earlier_stage_names_file_place_and_fix(two_fits, tmp_path):
    """Not in the issue: the dataset's manifest cut short, and a run record of the wrong shape."""
    root = copy_run(two_fits.root, tmp_path / "root")
    manifest = root / "datasets/demo/yolo/manifest.json"
    text = manifest.read_text()
    manifest.unlink()  # a hard link: the shared dataset keeps its own
    manifest.write_text(text[:200])
    before = outputs(root)
    line = one_error(run_module("fit", ["--config", DEMO, *TINY], root))
    assert ("datasets/demo/yolo/manifest.json (the dataset's manifest) cannot be read (JSONDecodeError) at line "
            in line) and "`make dataset FORCE=1` builds it again" in line, line
    assert outputs(root) == before
    manifest.write_text(text)
    state = root / "runs/demo/train/stage.json"
    state.write_text("[1, 2]\n")
    line = one_error(run_module("fit", ["--config", DEMO, *TINY], root))
    assert "runs/demo/train/stage.json (what the run was started with) cannot be read (ValueError): it holds a " \
           "JSON list, not an object; `make fit FRESH=1` trains anew" in line, line
    assert not aside(root) and not temps(root) and not locks(root)


# 3. every value checked against every stage that reads it, at load ----------------------------------
def all_stages(root: Path, *overrides) -> list[str]:
    """The one error line of every stage for these overrides (convert in its own environment)."""
    lines = [one_error(run_module(s, ["--config", DEMO, *overrides], root)) for s in ("dataset", "fit", "export",
                                                                                      "evaluate")]
    if CONVERT_PY.is_file():
        convert = subprocess.run([str(CONVERT_PY), "-m", "services.convert", "--config", DEMO, *overrides], cwd=ROOT,
                                 env=stage_env(root), capture_output=True, text=True, timeout=300)
        lines.append(one_error(convert))
    return lines


@pytest.mark.parametrize("overrides, expected", [
    (["dataset.calib_images=0"], "dataset.calib_images=0 leaves the INT8 build (convert.dtype=int8) without "
                                 "calibration images"),
    (["convert.calib_images=0"], "unknown key convert.calib_images (did you mean 'dataset.calib_images'?)"),
    # not in the issue: an opset torch cannot export YOLO to, a weights file of the other format
    (["export.opset=8"], "export.opset=8: YOLO's upsampling exports to ONNX from opset 9 on"),
    (["evaluate.format=pt", "evaluate.weights=model.onnx"], "evaluate.format=pt but evaluate.weights=model.onnx is "
                                                            "not a .pt file"),
    (["train.batch=auto"], "train.batch=auto sizes the batch from free GPU memory, but train.device=cpu"),
    (["convert.algorithm=mmse", "convert.dtype=fp16", "convert.hybrid=none"],
     "convert.algorithm=mmse is a quantization algorithm, but convert.dtype=fp16 quantizes nothing"),
    (["export.epochs=3"], "unknown key export.epochs (did you mean 'train.epochs'?)"),
])
def test_a_value_a_later_stage_cannot_use_is_refused_by_every_stage(tmp_path, demo_raw, overrides, expected):
    root = demo_root(tmp_path, demo_raw)
    before = outputs(root)
    lines = all_stages(root, *overrides)
    assert all(expected in line for line in lines), lines
    assert outputs(root) == before and not (root / "artifacts").exists() and not (root / "runs").exists()


# 4. failures of the OS and of the programs we start, in the project's words --------------------------
def test_a_full_disk_is_refused_before_the_export_with_the_estimate(two_fits, tmp_path):
    root = tmp_path / "root"
    with tmpfs(root / "artifacts", size="16m"):  # best.pt and last.pt take 11 MB: 5 MB left, 21 MB needed
        copy_dataset(two_fits.root, root)
        shutil.copytree(two_fits.root / "runs", root / "runs")
        shutil.copytree(two_fits.root / "artifacts", root / "artifacts", dirs_exist_ok=True)
        before = tree(root)
        proc = run_module("export", ["--config", DEMO, *TINY], root)
        line = one_error(proc)
        assert re.match(r"export: error: artifacts/demo/models/: [\d.]+ MB free, but the export stage needs about "
                        r"2\d\.\d MB there \(two ONNX models of about 1\d\.\d MB each\); free some space", line), line
        assert "Exporting" not in proc.stdout and tree(root) == before and not locks(root)


def test_a_disk_that_fills_during_the_export_leaves_no_model_without_a_manifest(two_fits, tmp_path):
    """The issue's second half: the space was there when the export started (another writer took it
    meanwhile; here: the tmpfs has inodes for the lock, models/ and one model, not two)."""
    root = tmp_path / "root"
    with tmpfs(root / "artifacts", size="200m") as art:
        copy_dataset(two_fits.root, root)
        shutil.copytree(two_fits.root / "runs", root / "runs")
        shutil.copytree(two_fits.root / "artifacts", art, dirs_exist_ok=True)
        st = os.statvfs(art)
        if subprocess.run(["mount", "-o", f"remount,nr_inodes={st.f_files - st.f_ffree + 3}", str(art)],
                          capture_output=True).returncode != 0:
            pytest.skip("cannot limit a tmpfs' inodes here")
        before = outputs(root)
        line = one_error(run_module("export", ["--config", DEMO, *TINY], root))
        assert line.startswith("export: error: artifacts/demo/models/demo.rknn-head.onnx: No space left on device")
        assert "the export stage needs about" in line and line.endswith(
            "removed the 1 output(s) this run had written: artifacts/demo/models/demo.onnx"), line
        assert outputs(root) == before and not (art / "demo" / "models").exists() and not locks(root)


def test_a_disk_that_fills_during_the_work_names_the_output_and_leaves_nothing(tmp_path, demo_raw):
    """Not in the issue: the disk runs out of inodes halfway through the dataset build (a real tmpfs
    with a few files to spare): the line names the output, not its temporary folder."""
    root = tmp_path / "root"
    with tmpfs(root / "datasets" / "demo", size="200m") as folder:
        shutil.copytree(demo_raw, folder / "raw")
        st = os.statvfs(folder)
        if subprocess.run(["mount", "-o", f"remount,nr_inodes={st.f_files - st.f_ffree + 40}", str(folder)],
                          capture_output=True).returncode != 0:
            pytest.skip("cannot limit a tmpfs' inodes here")
        before = tree(root)
        line = one_error(without_progress(run_module("dataset", ["--config", DEMO], root)))
        assert line.startswith("dataset: error: datasets/demo/yolo: No space left on device (") and \
               "no more files fit: the file system ran out of inodes" in line and \
               "the dataset stage needs about" in line and ".tmp-" not in line, line
        assert tree(root) == before and not temps(root) and not locks(root)


def test_a_read_only_folder_is_named_before_the_work(two_fits, tmp_path):
    root = copy_run(two_fits.root, tmp_path / "root")
    art = root / "artifacts" / "demo"
    before = tree(root)
    with read_only(art):
        proc = run_module("export", ["--config", DEMO, *TINY, "--force"], root)
        line = one_error(proc)
    assert line == ("export: error: artifacts/demo/: Read-only file system; the export stage writes there: it is on "
                    "a read-only mount: remount it read-write, or set PIPELINE_ROOT to a writable project folder, "
                    "then run it again"), line
    assert proc.stdout == "" and tree(root) == before  # before any work: not a line of the export's
    runs = root / "runs" / "demo" / "train"
    with read_only(runs):  # not in the issue: the training's run folder, for the fit stage
        line = one_error(run_module("fit", ["--config", DEMO, *TINY], root))
    assert line.startswith("fit: error: runs/demo/train/: Read-only file system; the fit stage writes there")
    assert tree(root) == before and not temps(root) and not locks(root)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_tensorboards_port_in_use_names_tb_port(tmp_path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        proc = subprocess.run(make_cmd("tensorboard", "RUNNER=local", f"TB_PORT={port}"), cwd=ROOT, capture_output=True,
                              text=True, env=user_env(tmp_path, PIPELINE_ROOT=str(tmp_path)), timeout=120)
    line = one_error(proc)
    assert line == (f"runner: error: TB_PORT={port}: port {port} on 127.0.0.1 is already in use (another TensorBoard, "
                    f"or another program); stop that, or choose another port: make tensorboard TB_PORT={port + 1}")
    bad = subprocess.run(make_cmd("tensorboard", "RUNNER=local", "TB_PORT=tb"), cwd=ROOT, capture_output=True,
                         text=True, env=user_env(tmp_path), timeout=120)
    assert "TB_PORT=tb is not a port; use a number from 1024 to 65535" in one_error(bad)
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize("address, expected", [
    ("head", "RAY_ADDRESS=head has no port; give the head node as host:port, e.g. RAY_ADDRESS=head:6379"),
    ("ray://10.0.0.5", "RAY_ADDRESS=ray://10.0.0.5 has no port; give the head node as host:port, e.g. "
                       "RAY_ADDRESS=ray://10.0.0.5:10001"),
    ("head:63790x", "RAY_ADDRESS=head:63790x: '63790x' is not a port (1 to 65535)"),
])
def test_a_ray_address_without_a_port_says_host_port(tmp_path, address, expected):
    sweep = tmp_path / "one-sweep.yaml"
    sweep.write_text("base: demo\nseeds: [0]\n")
    proc = run_module("sweep", [str(sweep)], tmp_path, timeout=120, env={"RAY_ADDRESS": address, "RUNNER": "local"})
    line = one_error(proc)
    assert line.startswith(f"sweep: error: {expected}") and "ValueError" not in line and "start it" not in line, line
    assert not (tmp_path / "artifacts").exists()


# 5. ARGS as the user means them ----------------------------------------------------------------------
def test_args_with_spaces_in_a_list_or_mapping_arrive_whole(tmp_path, demo_raw):
    from services.common import config
    from services.run import runner
    named = runner.settings({"ARGS": "evaluate.sets=[val, coco_person] train.epochs=2"}).args
    assert named == ["evaluate.sets=[val, coco_person]", "train.epochs=2"]
    assert config.load(DEMO, named)["evaluate"]["sets"] == ["val", "coco_person"]
    # the shell splits the same way without Make: the stage rejoins it too
    assert config.load(DEMO, ["evaluate.sets=[val,", "coco_person]"])["evaluate"]["sets"] == ["val", "coco_person"]
    root = demo_root(tmp_path, demo_raw)  # not in the issue: a mapping with spaces, through make to the stage
    proc = subprocess.run(make_cmd("dataset", "EXP=demo", "RUNNER=local",
                                   "ARGS=evaluate.sets=[val] train.extra={mosaic: 0.5, cos_lr: true}"),
                          cwd=ROOT, env={**stage_env(root), "PIPELINE_ROOT": str(root)}, capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    m = json.loads((root / "datasets/demo/yolo/manifest.json").read_text())["config"]
    assert m["train"]["extra"] == {"mosaic": 0.5, "cos_lr": True} and m["evaluate"]["sets"] == ["val"]


@pytest.mark.parametrize("args, expected", [
    ("dataset.name='my data", "ARGS=\"dataset.name='my data\" cannot be split into words (No closing quotation); "
                              "close the quote"),
    ("dataset.name=my data", "'data' after dataset.name=my is not section.key=value; if it is part of "
                             "dataset.name's value, the value was split at a space: quote it whole, e.g. "
                             "ARGS=\"dataset.name='my data'\""),
    ("evaluate.sets=[val, coco_person", "override evaluate.sets=[val, coco_person: the value is not a valid YAML list"),
])
def test_args_that_cannot_be_read_say_how_to_quote(tmp_path, args, expected):
    proc = subprocess.run(make_cmd("dataset", "EXP=demo", "RUNNER=local", f"ARGS={args}"), cwd=ROOT,
                          env={**stage_env(tmp_path), "PIPELINE_ROOT": str(tmp_path)}, capture_output=True, text=True,
                          timeout=300)
    assert expected in one_error(proc)
    assert not list(tmp_path.iterdir())


# 6. ultralytics' settings stay in the project -----------------------------------------------------------
@pytest.mark.parametrize("stage, args", [
    ("evaluate", ["evaluate.format=pt"]),  # the issue's: best.pt is loaded before anything else
    ("export", ["--force"]),               # not in the issue: the export never prepared ultralytics at all
])
def test_ultralytics_settings_stay_in_the_project(two_fits, tmp_path, stage, args):
    root = copy_run(two_fits.root, tmp_path / "root")
    shutil.rmtree(root / ".yolo", ignore_errors=True)
    home, scratch = tmp_path / "home", tmp_path / "tmp"
    home.mkdir(), scratch.mkdir()
    env = user_env(root, HOME=str(home), TMPDIR=str(scratch))
    env.pop("XDG_CONFIG_HOME", None)
    proc = subprocess.run([sys.executable, "-m", f"services.{stage}", "--config", DEMO, *TINY, *args], cwd=ROOT,
                          env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert not (home / ".config" / "Ultralytics").exists() and not list(scratch.glob("Ultralytics*"))
    assert (root / ".yolo" / "Ultralytics" / "settings.json").is_file()
