"""What a hostile first week finds, one test per class of fault: the exit code, the one-line
message, and the file system before and after (nothing lost, nothing left, no new *.old-* unless
something differed). Real stages, real ultralytics, real toolkit; kills are real SIGKILLs, timed by
waiting for the stage's own temporary file."""
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.helpers import (CONVERT_PY, ROOT, copy_dataset, demo_root, make, needs_convert_env, one_error, require, run_module,
                           stage_env)

DEMO = str(ROOT / "configs" / "demo.yaml")


def tree(root: Path) -> dict:
    """Every file under root with its size and mtime: the 'before' of a before-and-after."""
    return {str(p.relative_to(root)): (p.stat().st_size, p.stat().st_mtime_ns)
            for p in root.rglob("*") if p.is_file()}


def outputs(root: Path) -> dict:
    """The project's data and results (not ultralytics' settings folder, which any start may write)."""
    return {d: tree(root / d) for d in ("datasets", "artifacts", "runs")}


def aside(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*.old-*"))


def temps(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if ".tmp-" in p.name or ".replaced-" in p.name)


def copy_run(src: Path, dst: Path) -> Path:
    """A scratch root with the demo run's dataset (hard links) and a copy of its artifacts and runs."""
    copy_dataset(src, dst)
    for d in ("artifacts", "runs"):
        shutil.copytree(src / d, dst / d)
    return dst


def garble(png: Path) -> None:
    """Keep the PNG signature, header chunk and end chunk; replace everything between with noise."""
    data = png.read_bytes()
    noise = random.Random(0).randbytes(len(data) - 45)
    png.write_bytes(data[:33] + noise + data[-12:])


def kill_when(proc: subprocess.Popen, pattern: str, where: Path, timeout=600) -> Path:
    """SIGKILL the stage's process group as soon as a temporary file matching pattern exists."""
    deadline = time.time() + timeout
    while time.time() < deadline and proc.poll() is None:
        hits = list(where.rglob(pattern)) if where.exists() else []
        if hits:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            return hits[0]
        time.sleep(0.05)
    raise AssertionError(f"no {pattern} under {where} before the stage ended (exit {proc.poll()})")


def start(module: str, root: Path, *args) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", f"services.{module}", "--config", DEMO, *args], cwd=ROOT,
                            env=stage_env(root), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)


# 1. yes/no variables --------------------------------------------------------------------------------
def test_fresh_0_means_no(demo_run):
    root, _ = demo_run
    before = tree(root / "runs")
    proc = make("fit", "EXP=demo", "FRESH=0", "FORCE=false", "OFFLINE=no", root=root)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "runs/demo/train is finished and up to date" in proc.stdout
    assert tree(root / "runs") == before and not aside(root / "runs")
    bad = make("fit", "EXP=demo", "FRESH=maybe", root=root)
    assert "FRESH=maybe is not a yes/no value" in one_error(bad, "runner")
    assert tree(root / "runs") == before


# 2. the convert stage skips, logs and replaces: in tests/test_promises_convert.py, whose copy of the demo
# run and rebuilds it shares.


# 4. temporary files after a kill --------------------------------------------------------------------
def test_a_killed_dataset_stage_is_cleaned_up_by_the_next_run(tmp_path, demo_raw):
    root = demo_root(tmp_path, demo_raw)
    proc = start("dataset", root)
    left = kill_when(proc, ".yolo.tmp-*", root / "datasets" / "demo")
    assert left.exists() and not (root / "datasets" / "demo" / "yolo").exists()  # nothing half-built in place
    rerun = run_module("dataset", ["--config", DEMO], root)
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    assert "removed 1 temporary file(s) left by killed runs: datasets/demo/.yolo.tmp-" in rerun.stdout
    assert not temps(root) and (root / "datasets" / "demo" / "yolo" / "manifest.json").is_file()


def test_a_killed_export_is_cleaned_up_by_the_next_run(demo_snapshot, tmp_path):
    root = copy_run(demo_snapshot, tmp_path / "root")
    models = root / "artifacts" / "demo" / "models"
    live = lambda: {p.name: p.read_bytes() for p in models.glob("*.onnx") if not p.name.startswith(".")}  # noqa: E731
    before = live()
    proc = start("export", root, "--force")
    left = kill_when(proc, ".demo*.tmp-*.onnx", models)
    assert left.exists()
    assert live() == before  # the live models are intact
    rerun = run_module("export", ["--config", DEMO], root)
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    assert "temporary file(s) left by killed runs" in rerun.stdout and not temps(root)


@needs_convert_env
def test_a_killed_convert_stage_is_cleaned_up_by_the_next_run(demo_snapshot, tmp_path):
    root = copy_run(demo_snapshot, tmp_path / "root")
    art = root / "artifacts" / "demo"
    model = art / "models" / "demo_int8_rk3588.rknn"
    before = model.read_bytes()
    proc = subprocess.Popen([str(CONVERT_PY), "-m", "services.convert", "--config", DEMO, "--force"], cwd=ROOT,
                            env=stage_env(root), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    kill_when(proc, ".hybrid.tmp-*", art / "rknn")
    assert model.read_bytes() == before  # the live model is intact
    rerun = subprocess.run([str(CONVERT_PY), "-m", "services.convert", "--config", DEMO], cwd=ROOT,
                           env=stage_env(root), capture_output=True, text=True, timeout=900)
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    assert "temporary file(s) left by killed runs: artifacts/demo/rknn/.hybrid.tmp-" in rerun.stdout
    assert "is up to date" in rerun.stdout and not temps(root) and not aside(art)


# 5. what a later stage refuses is refused first, before anything moves --------------------------------
def test_values_a_later_stage_refuses_are_refused_before_any_work(demo_snapshot, tmp_path):
    root = copy_run(demo_snapshot, tmp_path / "root")
    before = outputs(root)
    line = one_error(run_module("fit", ["--config", DEMO, "train.imgsz=100"], root))
    assert "train.imgsz=100: every side must be a multiple of 32" in line and "use 96 or 128" in line
    line = one_error(run_module("export", ["--config", DEMO, "export.imgsz=[640,1000]"], root))
    assert "export.imgsz=[640, 1000]: every side must be a multiple of 32" in line and "use 992 or 1024" in line
    line = one_error(run_module("convert", ["--config", DEMO, "export.imgsz=[1024,9216]"], root))
    assert "export.imgsz=[1024, 9216]: 9216 is above the RKNN NPU's input limit of 8192 per side" in line
    line = one_error(run_module("export", ["--config", DEMO, "export.opset=20"], root))
    assert "export.opset=20: the convert stage's rknn-toolkit2 takes opsets 7..19" in line
    line = one_error(run_module("dataset", ["--config", DEMO, "convert.hybrid=auto", "convert.dtype=fp16"], root))
    assert "convert.hybrid=auto keeps some layers in fp16" in line
    # a finished run is not thrown away because the config changed: the user is asked
    line = one_error(run_module("fit", ["--config", DEMO, "train.epochs=17"], root))
    assert "runs/demo/train is a finished run with other settings: train.epochs (16 -> 17)" in line
    assert "FRESH=1" in line
    assert outputs(root) == before and not aside(root)


# 6. corrupt weights --------------------------------------------------------------------------------
def test_corrupt_weights_are_one_line_with_a_fix_that_works(demo_snapshot, tmp_path):
    root = copy_run(demo_snapshot, tmp_path / "root")
    best = root / "artifacts" / "demo" / "weights" / "best.pt"
    best.write_bytes(best.read_bytes()[:1000])
    line = one_error(run_module("export", ["--config", DEMO, "--force"], root))
    assert "artifacts/demo/weights/best.pt (the trained weights) cannot be read" in line and "`make fit`" in line
    line = one_error(run_module("evaluate", ["--config", DEMO, "evaluate.format=pt"], root))
    assert "artifacts/demo/weights/best.pt (a YOLO PyTorch checkpoint) cannot be read" in line and "`make fit`" in line
    # the fix the line gives: `make fit` copies the run's intact weights again, without training
    fit = run_module("fit", ["--config", DEMO], root)
    assert fit.returncode == 0 and "did not match the run's weights; copied them again" in fit.stdout
    assert best.read_bytes() == (root / "runs" / "demo" / "train" / "weights" / "best.pt").read_bytes()


# 7. a PNG whose header and end are valid but whose pixels are garbage -------------------------------
def test_garbage_pngs_are_kept_out_of_val_and_calibration(tmp_path, demo_raw):
    root = demo_root(tmp_path, demo_raw)
    assert run_module("dataset", ["--config", DEMO], root).returncode == 0
    out = root / "datasets" / "demo" / "yolo"
    calib = (out / "calib.txt").read_text().splitlines()
    raw = root / "datasets" / "demo" / "raw" / "leftImg8bit"
    val_png = sorted((raw / "val").rglob("*.png"))[0]
    calib_png = next(raw.rglob(Path(calib[0]).name))
    for png in (val_png, calib_png):
        png.unlink()  # the yolo/ hard links keep the good bytes; raw/ gets a new, garbled file
        shutil.copyfile(out / "val" / "images" / val_png.name if png == val_png else root / calib[0], png)
        garble(png)
    proc = run_module("dataset", ["--config", DEMO, "--force"], root)
    assert proc.returncode == 0, proc.stderr[-2000:]
    m = json.loads((out / "manifest.json").read_text())
    assert m["counts"]["val"]["unreadable"] == 1 and m["counts"]["val"]["images"] == 59
    assert m["counts"]["train"]["unreadable"] == 1
    new_calib = (out / "calib.txt").read_text().splitlines()
    assert len(new_calib) == len(calib) and Path(calib[0]).name not in {Path(p).name for p in new_calib}
    assert not (out / "val" / "images" / val_png.name).exists()
    assert "skipped 1 unreadable PNG(s)" in proc.stderr


# 8. ultralytics' validator leaves nothing in runs/ ----------------------------------------------------
def test_pt_evaluation_leaves_nothing_in_runs(demo_run):
    root, _ = demo_run
    assert sorted(p.name for p in (root / "runs").iterdir()) == ["demo"]
    assert sorted(p.name for p in (root / "runs" / "demo").iterdir()) == ["train"]
    assert not temps(root / "artifacts")


# beyond the list: an output folder the stage cannot write ------------------------------------------
def test_an_unwritable_output_folder_is_one_line_and_leaves_nothing(tmp_path, demo_raw):
    root = demo_root(tmp_path, demo_raw)
    folder = root / "datasets" / "demo"
    require(shutil.which("chattr"), "chattr (Debian's e2fsprogs)")
    if os.geteuid() != 0:
        pytest.skip("chattr +i needs root")  # the machine's, not the suite's: `make test` runs as root in CI
    made = subprocess.run(["chattr", "+i", str(folder)], capture_output=True, text=True)
    require(made.returncode == 0, f"chattr +i on {folder} ({made.stderr.strip()}): an ext4-like file system for "
                                  f"the test's temporary folders")
    try:
        before = tree(folder)
        line = one_error(run_module("dataset", ["--config", DEMO], root))
        assert line.startswith("dataset: error: datasets/demo/") and "Operation not permitted" in line
        assert "chattr -i" in line
        assert tree(folder) == before and not temps(root)
    finally:
        subprocess.run(["chattr", "-i", str(folder)])
    assert run_module("dataset", ["--config", DEMO], root).returncode == 0  # and once writable, it works


def test_a_damaged_ground_truth_names_the_stage_that_rebuilds_it(demo_snapshot, tmp_path):
    root = copy_run(demo_snapshot, tmp_path / "root")
    gt = root / "datasets" / "demo" / "yolo" / "val_gt.json"
    gt.unlink()  # a hard link: the demo run's own file stays whole
    gt.write_text('{"images": [')
    line = one_error(run_module("evaluate", ["--config", DEMO, "evaluate.format=onnx", "--force"], root))
    assert "datasets/demo/yolo/val_gt.json (the val set's ground truth) cannot be read (JSONDecodeError)" in line
    assert "`make dataset FORCE=1`" in line


def test_a_ram_cache_that_will_not_fit_is_refused_with_the_estimate(tmp_path, demo_raw):
    from services.common import yolo_env
    root = demo_root(tmp_path, demo_raw)
    assert run_module("dataset", ["--config", DEMO], root).returncode == 0
    train = root / "datasets/demo/yolo/train/images"
    images = sorted(train.glob("*.png"))
    per_image = yolo_env.ram_cache_need({"imgsz": 8192, "extra": {"cache": "ram"}}, images) / len(images)
    # On any machine: enough training images (hard links of one, a few bytes each) that the cache
    # asks for twice the memory available now (the label files do not matter to the estimate).
    have = yolo_env.available_memory()
    assert have > 0, "MemAvailable not found in /proc/meminfo"
    for i in range(max(0, int(2 * have / per_image) + 1 - len(images))):
        os.link(images[0], train / f"more-{i:06d}.png")
    need = yolo_env.ram_cache_need({"imgsz": 8192, "extra": {"cache": "ram"}}, sorted(train.glob("*.png")))
    assert need > 1.5 * yolo_env.available_memory()
    line = one_error(run_module("fit", ["--config", DEMO, "train.imgsz=8192", "train.extra={cache: ram}"], root))
    assert "train.extra.cache=ram needs about" in line and "GB are available" in line
    assert "train.extra.cache=disk" in line and not (root / "runs").exists()
