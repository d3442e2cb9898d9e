"""`make predict`: detections drawn by every format (pt, onnx, rknn in the simulator) on images and a
video, the same boxes as the evaluation's, and bad input refused in one line before any work."""
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

from tests.helpers import (CONVERT_PY, ROOT, make, needs_convert_env, needs_make_venv, one_error, require, stage_env)

DEMO = str(ROOT / "configs" / "demo.yaml")
FORMATS = ("pt", "onnx", "rknn")


def predict(root: Path, *args, fmt: str = "pt", timeout=900) -> subprocess.CompletedProcess:
    """`python -m services.predict` in the format's environment, as `make predict` runs it."""
    python = str(CONVERT_PY) if fmt == "rknn" else sys.executable
    return subprocess.run([python, "-m", "services.predict", "--config", DEMO, "--format", fmt, *map(str, args)],
                          cwd=ROOT, env=stage_env(root), capture_output=True, text=True, timeout=timeout)


def output(root: Path, fmt: str) -> Path:
    return root / "artifacts" / "demo" / "predict" / fmt


def iou(a, b) -> float:
    w = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    h = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - w * h
    return w * h / union if union > 0 else 0.0


@pytest.fixture(scope="module")
def predicted(demo_run, tmp_path_factory):
    """Every format predicts on the same 6 demo val images, in a root of its own (hard links of the demo
    run's dataset and artifacts: predict only adds predict/), so the shared demo root stays as it was."""
    demo_root, _ = demo_run
    root = tmp_path_factory.mktemp("predict")
    for part in ("datasets/demo", "artifacts/demo"):
        shutil.copytree(demo_root / part, root / part, copy_function=os.link)
    source = root / "my images"  # a space in the path, as users have
    source.mkdir()
    for p in sorted((root / "datasets/demo/yolo/val/images").glob("*.png"))[:6]:
        shutil.copy(p, source / p.name)
    procs, kept = {}, root / "kept"
    for fmt in FORMATS:
        if fmt == "rknn" and not CONVERT_PY.is_file():
            continue  # said by each test of the format: needs_format()
        procs[fmt] = predict(root, "--source", source, fmt=fmt)
        assert procs[fmt].returncode == 0, procs[fmt].stdout[-3000:] + procs[fmt].stderr[-3000:]
        shutil.copytree(output(root, fmt), kept / fmt)  # later tests predict again into the same folders
    return root, source, procs


def needs_format(procs: dict, fmt: str) -> None:
    """The rknn format needs the convert environment: a skip without it, a failure under `make test`."""
    require(fmt in procs, f"the convert environment's python {CONVERT_PY}, to predict with the rknn format")


def detections(root: Path, fmt: str) -> dict:
    """What the fixture's run of `fmt` wrote."""
    return json.loads((root / "kept" / fmt / "detections.json").read_text())


@pytest.mark.parametrize("fmt", FORMATS)
def test_each_format_draws_every_image_and_lists_it(predicted, fmt):
    root, source, procs = predicted
    needs_format(procs, fmt)
    names = sorted(p.name for p in source.iterdir())
    out = root / "kept" / fmt
    assert sorted(p.name for p in out.iterdir()) == sorted(names + ["detections.json"])  # nothing else left
    d = detections(root, fmt)
    assert sorted(d["files"]) == names and d["format"] == fmt and d["settings"]["conf"] == 0.25
    for name in names:
        drawn, original = cv2.imread(str(out / name)), cv2.imread(str(source / name))
        entry = d["files"][name]
        assert drawn.shape == original.shape and [entry["width"], entry["height"]] == [original.shape[1],
                                                                                       original.shape[0]]
        assert len(entry["boxes"]) == len(entry["scores"]) and all(s > 0.25 for s in entry["scores"])
        if entry["boxes"]:
            assert (drawn != original).any()  # boxes were drawn
    assert sum(len(f["boxes"]) for f in d["files"].values()) >= 6  # the demo model finds people
    summary = procs[fmt].stdout
    assert "ms/frame" in summary and f"artifacts/demo/predict/{fmt}" in summary


@pytest.mark.parametrize("fmt", FORMATS)
def test_boxes_are_the_evaluations_boxes(predicted, fmt):
    """Above the display threshold, predict lists exactly what the evaluator scored (metrics/<fmt>.val.
    detections.json): the same model file, letterbox and decode. For rknn this also proves the simulator
    model predict rebuilds is the one the convert stage measured."""
    root, source, procs = predicted
    needs_format(procs, fmt)
    gt = json.loads((root / "datasets/demo/yolo/val_gt.json").read_text())
    ids = {im["im_name"]: im["id"] for im in gt["images"]}
    evaluated = json.loads((root / f"artifacts/demo/metrics/{fmt}.val.detections.json").read_text())
    compared = 0
    for name, entry in detections(root, fmt)["files"].items():
        theirs = sorted(([d["bbox"][0], d["bbox"][1], d["bbox"][0] + d["bbox"][2], d["bbox"][1] + d["bbox"][3]],
                         d["score"]) for d in evaluated if d["image_id"] == ids[name] and d["score"] > 0.25)
        theirs = [t for t in theirs if abs(t[1] - 0.25) > 1e-3]  # a batch of 8 (pt) may shift a score by 1e-6
        ours = list(zip(entry["boxes"], entry["scores"]))
        assert len([o for o in ours if abs(o[1] - 0.25) > 1e-3]) == len(theirs), name
        for box, score in theirs:
            match = max(ours, key=lambda o: iou(o[0], box))
            assert iou(match[0], box) > 0.999 and abs(match[1] - score) < 1e-3, (name, box, score, match)
            compared += 1
    assert compared >= 6


def test_formats_agree_on_the_same_image(predicted):
    root, _, procs = predicted
    assert set(procs) >= {"pt", "onnx"}
    found = {fmt: detections(root, fmt)["files"] for fmt in procs}
    checked = 0
    for name, entry in found["pt"].items():
        for box, score in zip(entry["boxes"][:3], entry["scores"][:3]):  # pt's top boxes, best first
            if score < 0.5:
                continue
            for fmt in procs:
                best = max((iou(box, b) for b in found[fmt][name]["boxes"]), default=0.0)
                assert best > 0.9, (fmt, name, box, score, best)
            checked += 1
    assert checked >= 3
    needs_format(procs, "rknn")  # pt and onnx agree; the rknn format was among them (else said here)


def test_a_video_gives_an_mp4_with_every_frame(predicted, tmp_path):
    root, source, _ = predicted
    frames = [cv2.imread(str(p)) for p in sorted(source.iterdir())[:5]]
    video = tmp_path / "street.avi"
    writer = cv2.VideoWriter(str(video), cv2.VideoWriter_fourcc(*"MJPG"), 5.0, frames[0].shape[1::-1])
    for f in frames:
        writer.write(f)
    writer.release()
    proc = predict(root, "--source", video, "--conf", "0.4")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    out = output(root, "pt")
    assert sorted(p.name for p in out.iterdir()) == ["detections.json", "street.mp4"]
    cap = cv2.VideoCapture(str(out / "street.mp4"))
    read = []
    while True:
        ok, frame = cap.read()
        if not ok:
            break
        read.append(frame)
    assert len(read) == 5 and read[0].shape == frames[0].shape
    d = json.loads((out / "detections.json").read_text())
    entry = d["files"]["street.mp4"]
    assert len(entry["frames"]) == 5 and entry["fps"] == 5.0 and d["settings"]["conf"] == 0.4
    assert all(s > 0.4 for f in entry["frames"] for s in f["scores"]) and any(f["boxes"] for f in entry["frames"])
    # the images' predictions were another source: moved aside, not deleted
    aside = list(out.parent.glob("pt.old-*"))
    assert len(aside) == 1 and (aside[0] / "detections.json").is_file()
    assert "moved to artifacts/demo/predict/pt.old-" in proc.stdout


def test_an_rknn_built_from_other_settings_is_refused(predicted):
    root, source, procs = predicted
    needs_format(procs, "rknn")
    before = sorted(p.name for p in output(root, "rknn").iterdir())
    line = one_error(predict(root, "--source", source, "convert.algorithm=mmse", fmt="rknn"), "predict")
    assert "demo_int8_rk3588.rknn was built from other inputs" in line and "convert" in line
    assert "make convert" in line
    assert sorted(p.name for p in output(root, "rknn").iterdir()) == before


@needs_make_venv
def test_make_predict_runs_the_stage(predicted):
    root, source, _ = predicted
    image = sorted(source.iterdir())[0]
    proc = make("predict", "EXP=demo", f"SOURCE={image}", "FORMAT=onnx", 'ARGS=--conf 0.3', root=root, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    d = json.loads((output(root, "onnx") / "detections.json").read_text())
    assert list(d["files"]) == [image.name] and d["settings"]["conf"] == 0.3
    assert (output(root, "onnx") / image.name).is_file()


# ------------------------------------------------------------------------ bad input: no model needed
@pytest.fixture
def bare_root(tmp_path) -> Path:
    """A project root without any model, and one real image."""
    root = tmp_path / "root"
    root.mkdir()
    cv2.imwrite(str(tmp_path / "street.png"), np.full((64, 96, 3), 90, np.uint8))
    return root


def nothing_written(root: Path) -> bool:
    return not (root / "artifacts" / "demo" / "predict").exists()


def test_missing_source_is_one_line(bare_root):
    line = one_error(predict(bare_root, "--source", bare_root / "nowhere"))
    assert "nowhere does not exist" in line and "folder of images" in line
    assert nothing_written(bare_root)


def test_a_folder_without_images_is_one_line(bare_root):
    folder = bare_root / "notes"
    folder.mkdir()
    (folder / "readme.txt").write_text("no pictures here")
    line = one_error(predict(bare_root, "--source", folder))
    assert "folder notes has no images" in line and ".png" in line
    assert nothing_written(bare_root)


def test_a_video_opencv_cannot_open_is_one_line(bare_root):
    video = bare_root / "broken.mp4"
    video.write_bytes(b"this is not a video" * 100)
    line = one_error(predict(bare_root, "--source", video))
    assert "cannot open broken.mp4 as a video" in line
    assert nothing_written(bare_root)


@pytest.mark.parametrize("fmt,target", [("pt", "make fit"), ("onnx", "make export")])
def test_a_model_not_built_yet_names_its_target(bare_root, fmt, target):
    line = one_error(predict(bare_root, "--source", bare_root.parent / "street.png", fmt=fmt))
    assert f"no {fmt} model at artifacts/demo/" in line and f"`{target}`" in line
    assert nothing_written(bare_root)


@needs_convert_env
def test_an_rknn_not_built_yet_names_its_target(bare_root):
    line = one_error(predict(bare_root, "--source", bare_root.parent / "street.png", fmt="rknn"))
    assert "no rknn model at artifacts/demo/models/demo_int8_rk3588.rknn" in line and "`make convert`" in line
    assert nothing_written(bare_root)


def test_a_bad_threshold_is_one_line(bare_root):
    line = one_error(predict(bare_root, "--source", bare_root.parent / "street.png", "--conf", "1.5"))
    assert "--conf 1.5" in line
    assert nothing_written(bare_root)
