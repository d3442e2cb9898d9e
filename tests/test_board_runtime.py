"""The board runtime (services/board/, the bundle's detect.py): the pipeline of reader, pre-processing,
one inference context per NPU core and post-processing, run here exactly as on the board but with
onnxruntime on an ONNX model in place of the NPU.

The unit tests need no generated bundle: they import services.board and run it on a tiny ONNX model
built here with onnx.helper (real convolutions, the RKNN head's dfl layout), or call its checks on
real inputs. The others run detect.py as a user runs it, a subprocess of the train environment's
python (onnxruntime and OpenCV are there), in a bundle built here from an untrained YOLO11n (seconds,
no training): the pipeline's order, back-pressure and core assignment do not need good detections.
Its .rknn is a placeholder: `--backend onnx` never reads it and the rknn backend needs a board. The
slow test runs the real bundle of the demo training against the evaluation's own detections."""
import json
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import cv2
import numpy as np
import pytest

from tests.helpers import completed, one_error
from services.board import backends, bundle as bundle_checks, detect as board_detect, pipeline
from services.board import yolo_core as core
from services.board.errors import BadInput, LayoutError

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


# ------------------------------------------------------------------------------ no generated bundle
def tiny_onnx(path: Path, size=SIZE, box_channels: int = 64, seed: int = 0) -> Path:
    """A real ONNX model with the outputs of the RKNN head for an input of `size` (dfl layout, or
    distances with box_channels=4): per stride an average pool, a 1x1 convolution to the box outputs
    and one to a sigmoid score that follows the cell's brightness. Its detections mean nothing, but
    they are computed from the frame, so a frame swapped or decoded twice shows."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper
    rng = np.random.default_rng(seed)
    h, w = size
    nodes, weights, outputs = [], [], []
    for s in (8, 16, 32):
        weights += [numpy_helper.from_array(rng.normal(0, 2, (box_channels, 3, 1, 1)).astype(np.float32), f"wb{s}"),
                    numpy_helper.from_array(np.full((1, 3, 1, 1), 4, np.float32), f"ws{s}"),
                    numpy_helper.from_array(np.array([-6], np.float32), f"bs{s}")]
        nodes += [helper.make_node("AveragePool", ["images"], [f"pool{s}"], kernel_shape=[s, s], strides=[s, s]),
                  helper.make_node("Conv", [f"pool{s}", f"wb{s}"], [f"box_s{s}"]),
                  helper.make_node("Conv", [f"pool{s}", f"ws{s}", f"bs{s}"], [f"logit{s}"]),
                  helper.make_node("Sigmoid", [f"logit{s}"], [f"score_s{s}"])]
        outputs += [helper.make_tensor_value_info(f"box_s{s}", TensorProto.FLOAT, [1, box_channels, h // s, w // s]),
                    helper.make_tensor_value_info(f"score_s{s}", TensorProto.FLOAT, [1, 1, h // s, w // s])]
    graph = helper.make_graph(nodes, "tiny", [helper.make_tensor_value_info("images", TensorProto.FLOAT,
                                                                           [1, 3, h, w])], outputs, weights)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], ir_version=8)
    onnx.checker.check_model(model, full_check=True)
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path))
    return path


def tiny_bundle(folder: Path, **changes) -> Path:
    """A folder with a bundle.json written by hand around tiny_onnx's model: what main() reads. Its
    .rknn is a placeholder, as in the bundle below."""
    tiny_onnx(folder / "tiny.onnx")
    (folder / "tiny_int8_rk3588.rknn").write_text("placeholder: --backend onnx does not read it\n")
    manifest = {"experiment": "tiny", "model": "tiny_int8_rk3588.rknn", "onnx": "tiny.onnx", "imgsz_hw": list(SIZE),
                "toolkit_version": "2.3.2", "platform": "rk3588", "dtype": "int8", "iou": 0.7, "max_det": 300,
                "category_ids": [1], "labels": ["person"], "layout": "dfl", "built": "2025-01-01T00:00:00Z"}
    (folder / "bundle.json").write_text(json.dumps({**manifest, **changes}))
    return folder


def test_the_reader_waits_for_a_slow_consumer_and_errors_stop_every_thread(tmp_path):
    board = bundle_checks.load_bundle(tiny_bundle(tmp_path / "tiny"))
    contexts = backends.load_contexts("onnx", tmp_path / "tiny/tiny.onnx", [0, 1, 2], board)
    images = street_images(3)
    read, consumed, ahead = [0], [], []

    def frames(n, fail_at=None):
        for i in range(n):
            if i == fail_at:
                raise OSError("the camera went away")
            read[0] += 1
            yield f"f{i}", images[i % 3]

    pre = pipeline.preprocessor(board.size)
    post = pipeline.postprocessor(board.layout, board.size, 0.001, 0.7, 300)
    before = threading.active_count()
    try:
        for frame in pipeline.pipeline(frames(40), contexts, pre, post, depth=6):
            ahead.append(read[0] - len(consumed))
            consumed.append((frame.index, frame.name, frame.core))
            time.sleep(0.02)  # a consumer slower than the three contexts
        assert [c[:2] for c in consumed] == [(i, f"f{i}") for i in range(40)]
        assert {c[2] for c in consumed} == {0, 1, 2}
        # at most `depth` frames between the reader and the consumer, reordering included
        assert max(ahead) <= 6 and max(ahead) >= 3, ahead

        with pytest.raises(OSError, match="camera went away"):
            for _ in pipeline.pipeline(frames(40, fail_at=10), contexts, pre, post):
                pass
        assert threading.active_count() == before  # no thread left behind, none waiting forever

        # a consumer that stops early (a break, Ctrl-C) stops every thread too
        for frame in pipeline.pipeline(frames(40), contexts, pre, post, depth=6):
            if frame.index == 5:
                break
        assert threading.active_count() == before
    finally:
        for ctx in contexts:
            ctx.release()


def test_main_gives_the_decodes_detections_in_frame_order_without_a_generated_bundle(tmp_path, capsys):
    """main() in this process on tiny_bundle: three contexts, a folder of images, --json, --out and the
    report; every frame's detections are those of decode.py on onnxruntime's outputs for that frame."""
    folder = tiny_bundle(tmp_path / "tiny")
    images, out = tmp_path / "images", tmp_path / "out"
    images.mkdir()
    names = [f"street{i:02d}.png" for i in range(9)]
    for name, image in zip(names, street_images(9)):
        cv2.imwrite(str(images / name), image)
    (tmp_path / "gt.json").write_text(json.dumps({"images": [{"file_name": n, "id": i + 1}
                                                             for i, n in enumerate(names)]}))
    code = board_detect.main(folder, [str(images), "--backend", "onnx", "--conf", "0.001", "--json",
                                      str(out / "results.json"), "--gt", str(tmp_path / "gt.json"), "--out",
                                      str(out / "drawn"), "--report", str(out / "board_report.json")])
    printed = capsys.readouterr().out
    assert code == 0
    assert [line.split(":")[0] for line in printed.splitlines() if " person(s), NPU " in line] == names
    assert sorted(p.name for p in (out / "drawn").iterdir()) == names
    assert f"detections written to {out / 'results.json'}" in printed and "report written to" in printed

    import onnxruntime as ort
    options = ort.SessionOptions()  # one thread, as each context has: the same float sums, in the same order
    options.intra_op_num_threads = options.inter_op_num_threads = 1
    session = ort.InferenceSession(str(folder / "tiny.onnx"), options, providers=["CPUExecutionProvider"])
    expected = []
    for i, name in enumerate(names):
        x, meta = core.preprocess(cv2.imread(str(images / name)), SIZE)
        boxes, scores, cls = core.postprocess(session.run(None, {"images": x}), "dfl", SIZE, 0.001, 0.7, 300)
        expected += core.to_coco(i + 1, core.scale_boxes(boxes, meta), scores, cls, [1])
    results = json.loads((out / "results.json").read_text())
    assert len({d["image_id"] for d in results}) == len(names)  # detections in every frame: a swap would show
    assert results == expected

    report = json.loads((out / "board_report.json").read_text())
    assert report["cores"] == [0, 1, 2] and report["frames"] == len(names) and report["backend"] == "onnx"
    assert report["source_kind"] == f"folder of {len(names)} image(s)" and report["model"] == "tiny.onnx"
    assert report["runtime"].startswith("onnxruntime ") and report["bundle"]["layout"] == "dfl"
    assert sum(report["frames_per_core"].values()) == len(names) and report["interrupted"] is False


def test_model_runs_another_model_than_the_bundles_and_the_report_names_it(tmp_path, capsys):
    """docs/board.md: `--model PATH` runs another model with the bundle's settings; without it, a
    bundle whose model is missing is one line naming --model; board_report.json names the model run
    and its sha256."""
    import hashlib
    folder = tiny_bundle(tmp_path / "tiny")
    other = tmp_path / "elsewhere" / "retrained.onnx"
    other.parent.mkdir()
    tiny_onnx(other, seed=1)  # other weights: a report of the bundle's model would show
    (folder / "tiny.onnx").unlink()
    image = tmp_path / "street.jpg"
    cv2.imwrite(str(image), street_images(1)[0])
    report = tmp_path / "report.json"
    code = board_detect.main(folder, [str(image), "--backend", "onnx", "--report", str(report)])
    line = one_error(completed(code, capsys.readouterr()))
    assert line == f"error: {folder / 'tiny.onnx'} does not exist; copy the whole bundle folder, or pass --model"
    assert not report.exists()
    code = board_detect.main(folder, [str(image), "--backend", "onnx", "--model", str(other), "--report", str(report)])
    assert code == 0, capsys.readouterr().err
    written = json.loads(report.read_text())
    assert written["model"] == "retrained.onnx" and written["frames"] == 1
    assert written["model_sha256"] == hashlib.sha256(other.read_bytes()).hexdigest()


def test_main_refuses_bad_input_in_one_line_before_any_work(tmp_path, capsys):
    folder = tiny_bundle(tmp_path / "tiny")
    image = tmp_path / "street.jpg"
    cv2.imwrite(str(image), street_images(1)[0])

    def refused(*args, folder=folder) -> str:
        code = board_detect.main(folder, [*map(str, args), "--report", str(tmp_path / "report.json")])
        line = one_error(completed(code, capsys.readouterr()))
        assert line.startswith("error: "), line  # the board's own line: no stage name
        return line

    assert "nowhere.mp4 does not exist" in refused(tmp_path / "nowhere.mp4", "--backend", "onnx")
    line = refused(image, "--platform", "rk3568")
    assert "built for the rk3588" in line and "convert.platform=rk3568" in line
    line = refused(image, "--cores", "1")
    assert "rknn-toolkit-lite2" in line and "--backend onnx" in line
    line = refused(image, "--backend", "onnx", "--gt", tmp_path / "nowhere.json")
    assert "nowhere.json does not exist" in line
    # outputs in another layout than bundle.json names, and a layout this decode does not know
    tiny_onnx(folder / "tiny.onnx", box_channels=4)
    line = refused(image, "--backend", "onnx")
    assert "'dfl'" in line and "different conversions" in line
    tiny_bundle(folder, layout="yolo-end2end")
    line = refused(image, "--backend", "onnx")
    assert "'yolo-end2end'" in line and "dfl" in line
    (folder / "bundle.json").write_text("{")
    assert "bundle.json" in refused(image, "--backend", "onnx", folder=folder)
    assert not (tmp_path / "report.json").exists()  # no report, nothing half-written


def test_the_runtime_version_check():
    """The board's runtime must be at least the toolkit version the model was built with: older is a
    warning, the same or newer or no version said is not. get_sdk_version's text, as RKNNLite gives
    it: the first x.y.z is the API's (librknnrt)."""
    said = "librknnrt version: 1.6.0 (9a7b5d24c@2023-12-13T17:31:11)\nDRV: rknpu 0.9.3"
    line = bundle_checks.older_runtime_warning(said, "2.3.2")
    assert line == ("warning: the board's RKNN runtime is 1.6.0 but the model was built with rknn-toolkit2 "
                    "2.3.2; update librknnrt.so to 2.3.2 or newer if results look wrong")
    assert bundle_checks.older_runtime_warning(said.replace("1.6.0", "2.3.2"), "2.3.2") is None
    assert bundle_checks.older_runtime_warning(said.replace("1.6.0", "2.10.0"), "2.3.2") is None  # 10 > 3
    assert bundle_checks.older_runtime_warning("unknown", "2.3.2") is None
    assert bundle_checks.older_runtime_warning(None, "2.3.2") is None


def test_the_checks_before_any_frame(tmp_path):
    """Which chip, which cores, which layout: each check on real inputs."""
    compatible = tmp_path / "compatible"  # as an Orange Pi 5 says it: an RK3588S, which the toolkit calls rk3588
    compatible.write_bytes(b"rockchip,rk3588s-orangepi-5\0rockchip,rk3588\0")
    assert bundle_checks.board_platform(None, compatible) == (
        "rk3588", str(compatible), ["rockchip,rk3588s-orangepi-5", "rockchip,rk3588"])
    assert bundle_checks.board_platform("RK3566", compatible) == ("rk3566", "--platform", [])
    assert bundle_checks.board_platform(None, tmp_path / "absent") == (None, None, [])

    assert bundle_checks.parse_cores("all", "rknn", "rk3588") == [0, 1, 2]
    assert bundle_checks.parse_cores("all", "rknn", "rk3576") == [0, 1]
    assert bundle_checks.parse_cores("all", "rknn", "rk3566") == [0]
    assert bundle_checks.parse_cores("2", "onnx", "rk3566") == [2]  # CPU threads, not NPU cores
    with pytest.raises(BadInput, match=r"--cores 2: the rk3576 has 2 NPU core\(s\) \(0-1\); use --cores 0 or 1 or all"):
        bundle_checks.parse_cores("2", "rknn", "rk3576")

    board = bundle_checks.load_bundle(tiny_bundle(tmp_path / "tiny"))
    ctx = backends.OnnxBackend(tmp_path / "tiny/tiny.onnx", board)
    ctx.load(0)
    shapes = [np.shape(o) for o in ctx.run(np.full((1, *SIZE, 3), 114, np.uint8))]
    ctx.release()
    assert core.layout_of(shapes, SIZE) == "dfl"
    bundle_checks.check_layout("dfl", SIZE, [np.zeros(s) for s in shapes])
    with pytest.raises(LayoutError, match="different conversions"):
        bundle_checks.check_layout("distances", SIZE, [np.zeros(s) for s in shapes])
    with pytest.raises(LayoutError, match="different conversions"):
        bundle_checks.check_layout("dfl", SIZE[::-1], [np.zeros(s) for s in shapes])  # height and width swapped
    with pytest.raises(LayoutError, match="'standard'"):
        bundle_checks.check_layout("standard", SIZE)


def test_the_runtime_needs_nothing_of_the_project_but_decode(tmp_path):
    """The package as the bundle writer copies it (runtime/, decode.py as its yolo_core.py) imports
    in a python that has no `services` to find, and pulls in nothing of the x86 side."""
    from services.convert import board
    board.copy_runtime(tmp_path / "runtime")
    assert sorted(p.name for p in (tmp_path / "runtime").iterdir()) == sorted(
        p.name for p in Path(board_detect.__file__).parent.glob("*.py"))
    script = tmp_path / "imports.py"
    script.write_text("import sys\nfrom runtime import backends, bundle, detect, pipeline, report, source\n"
                      "print(sorted(m for m in sys.modules if m.split('.')[0] in "
                      "('services', 'torch', 'ultralytics', 'onnx', 'onnxruntime', 'rknnlite')))\n")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    proc = subprocess.run([sys.executable, "-s", str(script)], cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0 and proc.stdout.strip() == "[]", proc.stdout + proc.stderr


# ------------------------------------------------------------------------------ detect.py in a bundle
@pytest.mark.parametrize("kind", ["images", "video"])
def test_three_contexts_give_the_detections_of_one_in_frame_order(bundle, sources, kind, tmp_path):
    source, names, gt = sources[kind]
    runs, elapsed = {}, {}
    for cores in ("0", "all"):
        out = tmp_path / cores
        out.mkdir()
        t0 = time.perf_counter()
        proc = detect(bundle, source, "--backend", "onnx", "--cores", cores, "--conf", "0.001", "--json",
                      out / "results.json", "--gt", gt, "--out", out / "drawn", cwd=out)
        elapsed[cores] = time.perf_counter() - t0  # the process's whole life, start-up included
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
    assert_measured(report1, len(names), elapsed["0"])
    assert_measured(report3, len(names), elapsed["all"])
    fps = report3["throughput_fps"]
    assert fps["mean"] > 0 and fps["p50"] >= fps["p95"] > 0
    for label in ("pre-processing", "NPU", "post-processing", "end to end", "throughput (frames/s)"):
        assert label in stdout


def assert_measured(report: dict, frames: int, elapsed_s: float) -> None:
    """board_report.json's numbers are measurements of this run, in the units they name: each stage's
    latency in ms (the real work of pre-processing, inference and post-processing takes time; 0 <= p50 <=
    p95), a frame's end to end at least the sum of its stages (the mean is linear), the run's wall time
    within the process's life, the mean throughput frames over that wall time, no more than the contexts
    could infer in it, and the frames in flight (throughput x end-to-end latency, Little's law) at least
    about one and at most the pipeline's slots."""
    lat, fps, contexts = report["latency_ms"], report["throughput_fps"], report["contexts"]
    for stage in ("read", "pre", "npu", "post", "write", "end_to_end"):
        s = lat[stage]
        assert 0 <= s["p50"] <= s["p95"] and s["mean"] >= 0, (stage, s)
    for stage in ("pre", "npu", "post", "end_to_end"):  # real work on every frame
        assert lat[stage]["p50"] > 0 and lat[stage]["mean"] > 0, (stage, lat[stage])
    stages = sum(lat[k]["mean"] for k in ("read", "pre", "npu", "post", "write"))
    assert lat["end_to_end"]["mean"] >= stages - 0.01, lat  # (each mean is rounded to 0.001 ms)
    wall = report["wall_s"]
    assert 0 < wall <= elapsed_s and lat["end_to_end"]["p95"] <= 1000 * wall, (wall, elapsed_s, lat)
    assert fps["mean"] == pytest.approx(frames / wall, rel=0.01), (fps, frames, wall)
    assert frames * lat["npu"]["mean"] / contexts <= 1000 * wall * 1.05, (lat["npu"], contexts, wall)
    in_flight = fps["mean"] * lat["end_to_end"]["mean"] / 1000
    assert 0.5 <= in_flight <= pipeline.FRAMES_PER_CONTEXT * contexts + 1, (in_flight, fps, lat["end_to_end"])


def test_bad_input_is_one_line_before_any_work(bundle, sources, tmp_path):
    images, _, _ = sources["images"]
    bad, ok = tmp_path / "bad", tmp_path / "ok"
    bad.mkdir(), ok.mkdir()
    for cores in ("3", "-1", "0,1", "ALL"):
        line = one_error(detect(bundle, images, "--backend", "onnx", "--cores", cores, cwd=bad), usage=True)
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


def test_the_bundle_carries_the_runtime_and_a_rebuild_replaces_one_detect_py_ran_in(bundle, tmp_path):
    """detect.py at the root, the runtime in runtime/ with decode.py itself as yolo_core.py, each file
    listed in bundle.json. Python's bytecode cache (runtime/__pycache__, once detect.py ran) is no
    user's file: the bundle still counts as the convert stage's own, so a rebuild replaces it rather
    than moving it aside; an edited runtime file does not."""
    from services.common import decode
    from services.convert import board
    listed = json.loads((bundle / "bundle.json").read_text())["files"]
    assert "detect.py" in listed and "runtime/detect.py" in listed and "runtime/pipeline.py" in listed
    assert (bundle / "runtime/yolo_core.py").read_bytes() == Path(decode.__file__).read_bytes()
    copy = tmp_path / "board"
    shutil.copytree(bundle, copy)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    proc = subprocess.run([sys.executable, str(copy / "detect.py"), "--help"], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0 and "Pedestrian detection on the RK3588 NPU" in proc.stdout, proc.stderr
    assert (copy / "runtime/__pycache__").is_dir()
    assert board.written_by_us(copy)
    (copy / "runtime/pipeline.py").write_text("# edited on the board\n")
    assert not board.written_by_us(copy)


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
    images = {im["id"] for im in json.loads((yolo / "val_gt.json").read_text())["images"]}
    assert len(images) == 60 and ours.keys() == theirs.keys() == images  # at conf 0.001 every frame has some
    for i in theirs:  # onnxruntime on one thread or several: float sums in another order, hence a tolerance
        assert len(ours[i]) == len(theirs[i]), i
        a = np.array([d["bbox"] + [d["score"]] for d in ours[i]])
        b = np.array([d["bbox"] + [d["score"]] for d in theirs[i]])
        assert np.allclose(a[:, :4], b[:, :4], atol=0.05) and np.allclose(a[:, 4], b[:, 4], atol=1e-4), i
    report = json.loads((tmp_path / "board_report.json").read_text())
    assert report["frames"] == len(list((yolo / "val/images").iterdir())) and report["cores"] == [0, 1, 2]
