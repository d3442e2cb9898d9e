"""The board runtime (the bundle's detect.py): the pipeline of reader, pre-processing, one inference
context per NPU core and post-processing, run here exactly as on the board but with onnxruntime on
the bundle's ONNX model (the model the .rknn was built from) in place of the NPU. detect.py runs as a
user runs it, a subprocess of the train environment's python (onnxruntime and OpenCV are there).

Most tests use a bundle built here from an untrained YOLO11n (seconds, no training): the pipeline's
order, back-pressure and core assignment do not need good detections. Its .rknn is a placeholder:
`--backend onnx` never reads it and the rknn backend needs a board. The slow test runs the real
bundle of the demo training against the evaluation's own detections."""
import importlib.util
import json
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import cv2
import numpy as np
import pytest

from conftest import one_error

SIZE = (128, 192)  # not square: a swapped height and width shows


@pytest.fixture(scope="module")
def bundle(tmp_path_factory) -> Path:
    """artifacts/tiny/board/ as the convert stage writes it (board.write_bundle), around the RKNN-head
    ONNX of an untrained YOLO11n exported by the export stage's own code."""
    import torch
    from ultralytics.nn.tasks import DetectionModel
    from services.convert import board
    from services.export import export
    root = tmp_path_factory.mktemp("tiny-bundle")
    torch.manual_seed(0)
    model = DetectionModel("yolo11n.yaml", nc=1, verbose=False).fuse().eval()
    for m in model.modules():  # as export.load_model sets it
        if m.__class__.__name__ == "Detect":
            m.export, m.format, m.dynamic = True, "onnx", False
    models = root / "artifacts/tiny/models"
    export.export_onnx(export.RknnHead(model, SIZE, "dfl"), SIZE, 12, models / "tiny.rknn-head.onnx",
                       export.output_names("dfl"), "onnxslim")
    (models / "tiny_int8_rk3588.rknn").write_text("placeholder: --backend onnx does not read it\n")
    cfg = {"experiment": "tiny", "evaluate": {"iou": 0.7, "max_det": 300},
           "convert": {"platform": "rk3588", "dtype": "int8"}}
    return board.write_bundle(cfg, models / "tiny_int8_rk3588.rknn", SIZE, "dfl", "2.3.2", root)


def street_images(n: int, seed: int = 0, sizes=((480, 640), (300, 900), (720, 400))) -> list[np.ndarray]:
    """Blurred noise with a few upright blocks, in frame sizes that letterbox differently."""
    rng = np.random.default_rng(seed)
    images = []
    for i in range(n):
        h, w = sizes[i % len(sizes)]
        image = cv2.GaussianBlur(rng.integers(0, 255, (h, w, 3), dtype=np.uint8), (0, 0), 3)
        for _ in range(5):
            x, y = int(rng.integers(0, w - 60)), int(rng.integers(0, h - 120))
            cv2.rectangle(image, (x, y), (x + 40, y + 110), tuple(int(c) for c in rng.integers(0, 255, 3)), -1)
        images.append(image)
    return images


@pytest.fixture(scope="module")
def sources(tmp_path_factory) -> dict:
    """A folder of 12 images and a 24-frame video, each with a gt file mapping frame names to ids."""
    d = tmp_path_factory.mktemp("sources")
    folder = d / "images"
    folder.mkdir()
    names = []
    for i, image in enumerate(street_images(12)):
        names.append(f"street{i:02d}.jpg")
        cv2.imwrite(str(folder / names[-1]), image)
    video = d / "clip.avi"
    writer = cv2.VideoWriter(str(video), cv2.VideoWriter_fourcc(*"MJPG"), 10, (640, 480))
    for image in street_images(24, seed=1, sizes=((480, 640),)):
        writer.write(image)
    writer.release()
    frames = [f"clip_{i:06d}.jpg" for i in range(24)]
    for name, listed in (("images", names), ("clip", frames)):
        (d / f"{name}_gt.json").write_text(json.dumps({"images": [{"file_name": n, "id": i + 1}
                                                                   for i, n in enumerate(listed)]}))
    return {"images": (folder, names, d / "images_gt.json"), "video": (video, frames, d / "clip_gt.json")}


def detect(board: Path, *args, cwd: Path, timeout=300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(board / "detect.py"), *map(str, args)], cwd=cwd, capture_output=True,
                          text=True, timeout=timeout)


def load_detect(board: Path):
    """The bundle's detect.py as a module of its own name (other tests import another bundle's)."""
    sys.path.insert(0, str(board))  # for its `import yolo_core`
    try:
        spec = importlib.util.spec_from_file_location(f"detect_{abs(hash(str(board)))}", board / "detect.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    finally:
        sys.path.remove(str(board))
    return module


@pytest.mark.parametrize("kind", ["images", "video"])
def test_three_contexts_give_the_detections_of_one_in_frame_order(bundle, sources, kind, tmp_path):
    source, names, gt = sources[kind]
    runs = {}
    for cores in ("0", "all"):
        out = tmp_path / cores
        out.mkdir()
        proc = detect(bundle, source, "--backend", "onnx", "--cores", cores, "--conf", "0.001", "--json",
                      out / "results.json", "--gt", gt, "--out", out / "drawn", cwd=out)
        assert proc.returncode == 0, proc.stderr[-2000:]
        printed = [line.split(":")[0] for line in proc.stdout.splitlines() if " person(s), NPU " in line]
        assert printed == names  # every frame, in input order, whichever context finished first
        assert sorted(p.name for p in (out / "drawn").iterdir()) == names
        runs[cores] = (json.loads((out / "results.json").read_text()),
                       json.loads((out / "board_report.json").read_text()), proc.stdout)
    (one, report1, _), (three, report3, stdout) = runs["0"], runs["all"]
    assert one and three == one  # the same detections, frame for frame, to the 0.01 px
    assert len({d["image_id"] for d in one}) == len(names)  # (detections in every frame, so a swap would show)

    assert report1["cores"] == [0] and report3["cores"] == [0, 1, 2] and report3["contexts"] == 3
    assert report3["frames"] == len(names) and report3["source_kind"] == ("video" if kind == "video" else "folder "
                                                                            f"of {len(names)} image(s)")
    assert sum(report3["frames_per_core"].values()) == len(names)
    assert all(n > 0 for n in report3["frames_per_core"].values()), report3["frames_per_core"]  # each core ran
    assert report3["model"] == "tiny.rknn-head.onnx" and report3["backend"] == "onnx"
    assert report3["bundle"]["layout"] == "dfl" and report3["platform"]["bundle_platform"] == "rk3588"
    for stage in ("read", "pre", "npu", "post", "write", "end_to_end"):
        s = report3["latency_ms"][stage]
        assert 0 <= s["p50"] <= s["p95"] and s["mean"] >= 0, (stage, s)
    fps = report3["throughput_fps"]
    assert fps["mean"] > 0 and fps["p50"] >= fps["p95"] > 0
    for label in ("pre-processing", "NPU", "post-processing", "end to end", "throughput (frames/s)"):
        assert label in stdout


def test_the_reader_waits_for_a_slow_consumer_and_errors_stop_every_thread(bundle):
    detect_py = load_detect(bundle)
    contexts = detect_py.load_contexts("onnx", bundle / "tiny.rknn-head.onnx", [0, 1, 2])
    images = street_images(3)
    read, consumed, ahead = [0], [], []

    def frames(n, fail_at=None):
        for i in range(n):
            if i == fail_at:
                raise OSError("the camera went away")
            read[0] += 1
            yield f"f{i}", images[i % 3]

    post = detect_py.postprocessor(0.001, 0.7, 300)
    before = threading.active_count()
    try:
        for frame in detect_py.pipeline(frames(40), contexts, post, depth=6):
            ahead.append(read[0] - len(consumed))
            consumed.append((frame.index, frame.name, frame.core))
            time.sleep(0.02)  # a consumer slower than the three contexts
        assert [c[:2] for c in consumed] == [(i, f"f{i}") for i in range(40)]
        assert {c[2] for c in consumed} == {0, 1, 2}
        # at most `depth` frames between the reader and the consumer, reordering included
        assert max(ahead) <= 6 and max(ahead) >= 3, ahead

        with pytest.raises(OSError, match="camera went away"):
            for _ in detect_py.pipeline(frames(40, fail_at=10), contexts, post):
                pass
        assert threading.active_count() == before  # no thread left behind, none waiting forever
    finally:
        for ctx in contexts:
            ctx.release()


def test_bad_input_is_one_line_before_any_work(bundle, sources, tmp_path):
    images, _, _ = sources["images"]
    bad, ok = tmp_path / "bad", tmp_path / "ok"
    bad.mkdir(), ok.mkdir()
    for cores in ("3", "-1", "0,1", "ALL"):
        line = one_error(detect(bundle, images, "--backend", "onnx", "--cores", cores, cwd=bad))
        assert "--cores" in line and "'all'" in line
    # a bundle for another SoC: the board says which it is (/proc/device-tree/compatible, or --platform)
    line = one_error(detect(bundle, images, "--platform", "rk3568", cwd=bad))
    assert "built for the rk3588" in line and "rk3568" in line and "convert.platform=rk3568" in line
    # ... which does not matter to onnxruntime
    proc = detect(bundle, images, "--backend", "onnx", "--platform", "rk3568", "--cores", "0", "--quiet", cwd=ok)
    assert proc.returncode == 0 and (ok / "board_report.json").is_file(), proc.stderr[-2000:]
    # the rknn backend off the board: the runtime is missing, said in one line
    line = one_error(detect(bundle, images, "--cores", "1", cwd=bad))
    assert "rknn-toolkit-lite2" in line and "--backend onnx" in line
    broken = tmp_path / "broken.mp4"
    broken.write_text("not a video\n")
    line = one_error(detect(bundle, broken, "--backend", "onnx", cwd=bad))
    assert "cannot open" in line and str(broken) in line and "ffmpeg" in line
    line = one_error(detect(bundle, tmp_path / "nowhere.mp4", "--backend", "onnx", cwd=bad))
    assert "nowhere.mp4 does not exist" in line

    # one damaged image in a folder is skipped with a line, the others are detected in order
    damaged = tmp_path / "damaged"
    shutil.copytree(images, damaged)
    (damaged / "street05.jpg").write_bytes((images / "street05.jpg").read_bytes()[:200])
    proc = detect(bundle, damaged, "--backend", "onnx", "--cores", "all", cwd=ok)
    assert proc.returncode == 0 and "street05.jpg: unreadable, skipped" in proc.stderr, proc.stderr[-2000:]
    printed = [line.split(":")[0] for line in proc.stdout.splitlines() if " person(s), NPU " in line]
    assert printed == [f"street{i:02d}.jpg" for i in range(12) if i != 5]
    assert json.loads((ok / "board_report.json").read_text())["frames"] == 11

    # a model whose outputs are not the layout bundle.json names: refused when it is loaded
    other = tmp_path / "other"
    shutil.copytree(bundle, other)
    manifest = json.loads((bundle / "bundle.json").read_text())
    (other / "bundle.json").write_text(json.dumps({**manifest, "layout": "normalized"}))
    line = one_error(detect(other, images, "--backend", "onnx", cwd=bad))
    assert "'normalized'" in line and "different conversions" in line
    assert not list(bad.iterdir())  # no report, nothing half-written


def test_the_demo_bundle_on_the_cpu_gives_the_evaluations_detections(demo_run, tmp_path):
    """The real bundle of the demo training: its ONNX through the board pipeline with three contexts
    gives the detections the evaluation stage scored for that model (onnx-rknn-head)."""
    root, _ = demo_run
    board = root / "artifacts/demo/board"
    manifest = json.loads((board / "bundle.json").read_text())
    assert manifest["onnx"] == "demo.rknn-head.onnx" and manifest["onnx"] in manifest["files"]
    metrics = json.loads((root / "artifacts/demo/metrics/onnx-rknn-head.json").read_text())
    evaluated = json.loads((root / metrics["sets"]["val"]["detections_file"]).read_text())
    yolo = root / "datasets/demo/yolo"
    proc = detect(board, yolo / "val/images", "--backend", "onnx", "--cores", "all", "--conf", "0.001", "--json",
                  tmp_path / "board.json", "--gt", yolo / "val_gt.json", "--quiet", cwd=tmp_path, timeout=900)
    assert proc.returncode == 0, proc.stderr[-2000:]
    ours = json.loads((tmp_path / "board.json").read_text())
    by_image = lambda dets: {i: [d for d in dets if d["image_id"] == i] for i in {d["image_id"] for d in dets}}
    ours, theirs = by_image(ours), by_image(evaluated)
    assert ours.keys() == theirs.keys()
    for i in theirs:  # onnxruntime on one thread or several: float sums in another order, hence a tolerance
        assert len(ours[i]) == len(theirs[i]), i
        a = np.array([d["bbox"] + [d["score"]] for d in ours[i]])
        b = np.array([d["bbox"] + [d["score"]] for d in theirs[i]])
        assert np.allclose(a[:, :4], b[:, :4], atol=0.05) and np.allclose(a[:, 4], b[:, 4], atol=1e-4), i
    report = json.loads((tmp_path / "board_report.json").read_text())
    assert report["frames"] == len(list((yolo / "val/images").iterdir())) and report["cores"] == [0, 1, 2]
