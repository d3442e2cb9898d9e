"""The board's detect.py (docs/board.md), as a user runs it in a bundle the convert stage's writer
built around a tiny real ONNX (no training): Ctrl-C on a video writes the report of the frames done
and exits 130; an empty folder and a core the chip does not have are one line and exit 2 before any
work; board_report.json carries `"schema": 1`, the fields the page lists and the runtime's version."""
import json
import signal
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

from tests.helpers import one_error
from tests.test_board_runtime import SIZE, street_images, tiny_onnx

# What docs/board.md ("What it measures") says board_report.json holds, under the names detect.py writes.
REPORT_KEYS = {"schema", "backend", "runtime", "cores", "contexts", "tiles", "tile_overlap", "model", "model_sha256",
               "source", "source_kind", "frames", "interrupted", "conf", "iou", "max_det", "latency_ms", "throughput_fps",
               "wall_s", "frames_per_core", "npu_ms_per_core", "platform", "bundle", "versions", "written"}
STAGES = {"read", "pre", "npu", "post", "write", "end_to_end"}


def bundle_for(root: Path, platform: str = "rk3588") -> Path:
    """artifacts/tiny/board/ as the convert stage writes it (board.write_bundle) for `platform`, around
    a tiny real ONNX. Its .rknn is a placeholder: --backend onnx never reads it."""
    from services.convert import board
    models = root / "artifacts" / "tiny" / "models"
    tiny_onnx(models / "tiny.rknn-head.onnx")
    rknn = models / f"tiny_int8_{platform}.rknn"
    rknn.write_text("placeholder: --backend onnx does not read it\n")
    cfg = {"experiment": "tiny", "evaluate": {"iou": 0.7, "max_det": 300},
           "convert": {"platform": platform, "dtype": "int8"}}
    return board.write_bundle(cfg, rknn, SIZE, "dfl", "2.3.2", root)


def detect(board: Path, *args, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(board / "detect.py"), *map(str, args)], cwd=cwd, capture_output=True,
                          text=True, timeout=300)


def test_board_report_has_schema_1_every_documented_field_and_the_runtime_version(tmp_path):
    import onnxruntime
    board = bundle_for(tmp_path / "root")
    images = tmp_path / "images"
    images.mkdir()
    for i, image in enumerate(street_images(4)):
        cv2.imwrite(str(images / f"street{i}.jpg"), image)
    proc = detect(board, images, "--backend", "onnx", "--cores", "all", "--quiet", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "report written to board_report.json" in proc.stdout
    report = json.loads((tmp_path / "board_report.json").read_text())
    assert report["schema"] == 1
    assert set(report) == REPORT_KEYS, set(report) ^ REPORT_KEYS
    # the backend and the runtime's own version (the python that ran detect.py), not just its name
    assert report["backend"] == "onnx" and report["runtime"] == f"onnxruntime {onnxruntime.__version__}"
    assert report["cores"] == [0, 1, 2] and report["contexts"] == 3 and report["frames"] == 4
    assert report["model"] == "tiny.rknn-head.onnx" and report["source"] == str(images)
    bundle = json.loads((board / "bundle.json").read_text())  # --iou, --max-det, --tiles: the bundle's by default
    assert report["model_sha256"] == bundle["files"]["tiny.rknn-head.onnx"]  # the bytes that ran
    assert (report["iou"], report["max_det"], report["tiles"], report["tile_overlap"]) == (
        bundle["iou"], bundle["max_det"], bundle["tiles"], bundle["tile_overlap"])
    assert report["interrupted"] is False and set(report["latency_ms"]) == STAGES
    assert sum(report["frames_per_core"].values()) == 4 and set(report["npu_ms_per_core"]) == {"0", "1", "2"}
    assert set(report["platform"]) == {"soc", "soc_from", "compatible", "machine", "bundle_platform", "cpus"}
    assert report["platform"]["bundle_platform"] == "rk3588"
    assert report["bundle"] == {k: bundle[k] for k in ("experiment", "model", "onnx", "imgsz_hw", "layout", "dtype",
                                                       "toolkit_version", "built")}
    assert report["versions"] == {"python": sys.version.split()[0], "opencv": cv2.__version__,
                                  "numpy": np.__version__}


def test_ctrl_c_on_a_video_writes_the_report_of_the_frames_done_and_exits_130(tmp_path):
    """SIGINT, as Ctrl-C sends it, once frames come out of a long video: the run stops, says how many
    frames it did, writes board_report.json for those (interrupted: true) with the summary table, and
    exits 130."""
    board = bundle_for(tmp_path / "root")
    video = tmp_path / "live.avi"
    frames = street_images(8, sizes=((240, 320),))
    writer = cv2.VideoWriter(str(video), cv2.VideoWriter_fourcc(*"MJPG"), 25, (320, 240))
    for i in range(3000):  # minutes of work for the tiny model: it is still running when the signal comes
        writer.write(frames[i % len(frames)])
    writer.release()
    proc = subprocess.Popen([sys.executable, str(board / "detect.py"), str(video), "--backend", "onnx", "--cores",
                             "all"], cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        seen = 0
        for line in proc.stdout:  # frames come out: the pipeline runs
            seen += " person(s), NPU " in line
            if seen == 5:
                break
        assert seen == 5, proc.stderr.read()[-2000:]
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 130, err[-2000:]
    assert "Traceback" not in err, err[-3000:]
    said = [line for line in err.splitlines() if line.startswith("interrupted after ")]
    assert len(said) == 1, err[-2000:]
    done = int(said[0].split()[2])
    assert 5 <= done < 3000
    report = json.loads((tmp_path / "board_report.json").read_text())
    assert report["interrupted"] is True and report["frames"] == done and report["source_kind"] == "video"
    assert sum(report["frames_per_core"].values()) == done
    assert report["latency_ms"]["npu"]["mean"] > 0 and report["throughput_fps"]["mean"] > 0
    assert f"\n{done} frame(s), onnx backend, 3 context(s)" in out and "report written to board_report.json" in out
    assert not list(tmp_path.glob(".board_report.json.tmp-*"))


def test_an_empty_folder_is_one_line_before_any_work(tmp_path):
    board = bundle_for(tmp_path / "root")
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "notes.txt").write_text("no pictures here\n")
    run = tmp_path / "run"
    run.mkdir()
    line = one_error(detect(board, tmp_path / "empty", "--backend", "onnx", cwd=run))
    assert line == (f"error: {tmp_path / 'empty'} holds no images (.bmp, .jpeg, .jpg, .png); give a folder of "
                    f"images, an image or a video file")
    assert not list(run.iterdir())  # no report


@pytest.mark.parametrize("platform, cores, expected", [
    ("rk3566", "1", "--cores 1: the rk3566 has 1 NPU core(s) (0); use --cores 0 or all"),
    ("rk3576", "2", "--cores 2: the rk3576 has 2 NPU core(s) (0-1); use --cores 0 or 1 or all"),
])
def test_a_core_the_chip_does_not_have_is_one_line_before_any_work(tmp_path, platform, cores, expected):
    """A bundle built for a chip with fewer NPU cores: the rknn backend's --cores is checked against it
    before any context is loaded (so before the missing rknn-toolkit-lite2 off the board is noticed)."""
    board = bundle_for(tmp_path / "root", platform)
    image = tmp_path / "street.jpg"
    cv2.imwrite(str(image), street_images(1)[0])
    run = tmp_path / "run"
    run.mkdir()
    line = one_error(detect(board, image, "--cores", cores, "--platform", platform, cwd=run))
    assert line == f"error: {expected}", line
    assert not list(run.iterdir())
