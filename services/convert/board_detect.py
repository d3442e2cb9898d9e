#!/usr/bin/env python3
"""Pedestrian detection on the RK3588 NPU with rknn-toolkit-lite2 (copied into the board bundle as detect.py).

    python3 detect.py SOURCE [--cores 0|1|2|all] [--out DIR] [--json results.json --gt val_gt.json] [--conf 0.25]

SOURCE is an image, a folder of images, or a video file. Frames go through a pipeline: one thread
reads the video (the pre-processing threads read a folder's images, in parallel), pre-processing
(letterbox, OpenCV), the NPU (one context per core, each bound to its core;
`--cores all` runs three contexts on cores 0, 1 and 2, on consecutive frames) and post-processing
(decode, NMS) run in parallel, and results come out in frame order. At most a few frames per context
are in flight: a slow stage holds the reader back instead of filling memory.

At the end it prints the latency of each stage and the throughput (mean, p50, p95) and writes them
to board_report.json (--report), with the cores, model, frames and platform.

Letterbox and decode are those of the evaluation that measured this model in the simulator
(yolo_core.py is a copy of the project's services/common/decode.py), so the board's numbers can be
compared with metrics/rknn.json. `--backend onnx` runs the same pipeline on the CPU with onnxruntime
and the float ONNX model the .rknn was built from (in the bundle), one CPU thread per context: on a
PC, without an NPU.
"""
import argparse
import json
import os
import platform
import queue
import re
import sys
import threading
import time
from pathlib import Path

import cv2
import numpy as np

import yolo_core as core

HERE = Path(__file__).resolve().parent
BUNDLE = json.loads((HERE / "bundle.json").read_text())
SIZE = tuple(BUNDLE["imgsz_hw"])
LAYOUT = BUNDLE.get("layout", "normalized")  # bundles from before the layout was recorded had that one
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp"}
NPU_CORES = {"rk3588": 3, "rk3576": 2}  # the others have one NPU core, which takes no core mask
FRAMES_PER_CONTEXT = 4  # frames in flight per context: enough to keep each stage busy, bounded


class LayoutError(Exception):
    pass


class BadInput(Exception):
    """A problem the user can fix before any work: printed as one line, exit code 2."""


def check_layout(outputs) -> None:
    """The bundle's layout must be one this decode knows, and the model's outputs must have its shapes."""
    if LAYOUT not in core.LAYOUTS or LAYOUT == "standard":
        raise LayoutError(f"bundle.json names output layout {LAYOUT!r}, which this detect.py does not decode "
                          f"(it knows {', '.join(k for k in core.LAYOUTS if k != 'standard')}); copy the whole "
                          f"bundle folder from the same conversion (artifacts/<exp>/board/)")
    if outputs is not None:
        try:
            found = core.layout_of([np.shape(o) for o in outputs], SIZE)
        except ValueError as e:
            found = str(e)
        if found != LAYOUT:
            raise LayoutError(f"the model's outputs do not have the {LAYOUT!r} layout bundle.json names ({found}); "
                              f"the .rknn and bundle.json come from different conversions: copy the whole bundle "
                              f"folder again")


def detections(outputs, meta, conf: float, iou: float, max_det: int):
    """The model's raw outputs for one image -> original-pixel xyxy boxes, scores, classes, decoded
    exactly as the simulator evaluation decoded them (yolo_core.postprocess)."""
    boxes, scores, cls = core.postprocess(outputs, LAYOUT, SIZE, conf, iou, max_det)
    return core.scale_boxes(boxes, meta), scores, cls


def runtime_check(rknn) -> str:
    """The NPU driver/runtime must be at least the toolkit version the model was built with (warned
    once, not once per context). Returns the runtime's version as it reports it."""
    if CHECKED:
        return CHECKED[0]
    try:
        sdk = rknn.get_sdk_version()
    except Exception:
        return "unknown"
    built = BUNDLE["toolkit_version"]
    match = re.search(r"(\d+)\.(\d+)\.(\d+)", str(sdk or ""))
    found = [int(x) for x in match.groups()] if match else []
    want = [int(x) for x in built.split(".")[:3]]
    if found and found < want:
        print(f"warning: the board's RKNN runtime is {'.'.join(map(str, found))} but the model was built with "
              f"rknn-toolkit2 {built}; update librknnrt.so to {built} or newer if results look wrong",
              file=sys.stderr)
    CHECKED.append(" ".join(str(sdk).split()))
    return CHECKED[0]


CHECKED = []  # the runtime version, once checked


# ------------------------------------------------------------------------------------------ backends
# An inference context: load(core) once, run(tensor) per frame, release() at the end. The pipeline
# gives each context its own thread; nothing else in this file knows which runtime is behind it.

class RknnLiteBackend:
    """rknn-toolkit-lite2 on the NPU: one RKNNLite context bound to one NPU core. The model takes
    the letterboxed uint8 RGB NHWC frame and normalises it itself."""

    def __init__(self, model: Path):
        self.model, self.core, self.rknn, self.runtime = model, None, None, ""

    def load(self, core_id: int) -> None:
        try:
            from rknnlite.api import RKNNLite
        except ImportError as e:
            raise BadInput(f"rknn-toolkit-lite2 is not installed ({e}); on the board: pip3 install "
                           f"rknn-toolkit-lite2=={BUNDLE['toolkit_version']} (on a PC use --backend onnx)") from e
        masks = [RKNNLite.NPU_CORE_0, RKNNLite.NPU_CORE_1, RKNNLite.NPU_CORE_2]
        self.core, self.rknn = core_id, RKNNLite()
        kwargs = {"core_mask": masks[core_id]} if BUNDLE["platform"] in NPU_CORES else {}
        if self.rknn.load_rknn(str(self.model)) != 0 or self.rknn.init_runtime(**kwargs) != 0:
            raise BadInput(f"cannot load {self.model} on NPU core {core_id}; is this an {BUNDLE['platform']} with "
                           f"the RKNN runtime (librknnrt.so {BUNDLE['toolkit_version']} or newer) installed?")
        self.runtime = f"librknnrt {runtime_check(self.rknn)}"

    def run(self, tensor: np.ndarray) -> list:
        return self.rknn.inference(inputs=[tensor], data_format="nhwc")

    def release(self) -> None:
        if self.rknn is not None:
            self.rknn.release()


class OnnxBackend:
    """onnxruntime on the CPU with the float ONNX model the .rknn was built from, on one thread per
    context (the CPU's stand-in for one NPU core): the pipeline runs unchanged on a PC."""

    def __init__(self, model: Path):
        self.model, self.core, self.session, self.runtime = model, None, None, ""

    def load(self, core_id: int) -> None:
        try:
            import onnxruntime as ort
        except ImportError as e:
            raise BadInput(f"--backend onnx needs onnxruntime ({e}); pip3 install onnxruntime") from e
        options = ort.SessionOptions()
        options.intra_op_num_threads = options.inter_op_num_threads = 1
        try:
            self.session = ort.InferenceSession(str(self.model), options, providers=["CPUExecutionProvider"])
        except Exception as e:
            raise BadInput(f"onnxruntime cannot load {self.model} ({type(e).__name__}); --backend onnx takes the "
                           f"bundle's .onnx (the model the .rknn was built from)") from e
        self.core, self.input = core_id, self.session.get_inputs()[0].name
        self.runtime = f"onnxruntime {ort.__version__}"

    def run(self, tensor: np.ndarray) -> list:
        # uint8 NHWC -> the float NCHW in [0, 1] the ONNX model takes: exactly what the .rknn computes inside
        x = np.ascontiguousarray(tensor.transpose(0, 3, 1, 2), dtype=np.float32) / 255.0
        return self.session.run(None, {self.input: x})

    def release(self) -> None:
        self.session = None


BACKENDS = {"rknn": RknnLiteBackend, "onnx": OnnxBackend}


def load_contexts(backend: str, model: Path, cores: list[int]) -> list:
    """One context per core, each run once on a blank frame: that checks the model's output layout
    before any frame is read, and keeps first-run set-up out of the measured latencies."""
    contexts = []
    try:
        for c in cores:
            ctx = BACKENDS[backend](model)
            contexts.append(ctx)
            ctx.load(c)
            check_layout(ctx.run(np.full((1, *SIZE, 3), 114, np.uint8)))
    except BaseException:
        for ctx in contexts:
            ctx.release()
        raise
    return contexts


# ------------------------------------------------------------------------------------------ pipeline
class Frame:
    """One frame on its way through the pipeline, with what each stage measured (ms). `image` is a
    decoded BGR image, or the Path of one that pre-processing reads; None once found unreadable
    (the frame then passes through every stage untouched, to keep the order, and is skipped)."""

    def __init__(self, index: int, name: str, image, started: float, read_ms: float):
        self.index, self.name, self.image, self.started = index, name, image, started
        self.tensor = self.meta = self.outputs = self.core = None
        self.boxes = self.scores = self.cls = None
        self.ms = {"read": read_ms}
        self.done = 0.0


END = object()  # what a stage passes on after the last frame


class Aborted(Exception):
    """Another thread failed (or the consumer stopped): this one leaves."""


def _get(q: queue.Queue, stop: threading.Event):
    while True:
        try:
            return q.get(timeout=0.05)
        except queue.Empty:
            if stop.is_set():
                raise Aborted from None


def _stage(workers: list, inq: queue.Queue, outq: queue.Queue, stop: threading.Event, errors: list) -> list:
    """One thread per worker function, all taking frames from `inq` and putting them on `outq`; the
    last one to see END passes it on."""
    left, lock = [len(workers)], threading.Lock()

    def loop(work):
        try:
            while True:
                frame = _get(inq, stop)
                if frame is END:
                    inq.put(END)  # for the other threads of this stage
                    break
                work(frame)
                outq.put(frame)
        except Aborted:
            return
        except BaseException as e:
            errors.append(e)
            stop.set()
            return
        with lock:
            left[0] -= 1
            if left[0] == 0:
                outq.put(END)

    return [threading.Thread(target=loop, args=(w,), daemon=True) for w in workers]


def preprocess(frame: Frame) -> None:
    """Read the image if it is a file (several threads decode PNGs faster than one), then letterbox
    with the board's OpenCV into the uint8 RGB NHWC tensor the .rknn takes (it normalises inside);
    meta is what scale_boxes needs, as yolo_core.preprocess returns it."""
    t = time.perf_counter()
    if isinstance(frame.image, Path):
        frame.image = cv2.imread(str(frame.image))
        frame.ms["read"] = (time.perf_counter() - t) * 1000
        t = time.perf_counter()
    if frame.image is None:
        return
    padded, r, pad = core.letterbox(frame.image, SIZE)
    frame.tensor = cv2.cvtColor(padded, cv2.COLOR_BGR2RGB)[None]
    frame.meta = (r, pad, frame.image.shape[:2])
    frame.ms["pre"] = (time.perf_counter() - t) * 1000


def npu(ctx):
    def run(frame: Frame) -> None:
        if frame.tensor is None:  # unreadable
            return
        t = time.perf_counter()
        frame.outputs = ctx.run(frame.tensor)
        frame.ms["npu"] = (time.perf_counter() - t) * 1000
        frame.core, frame.tensor = ctx.core, None
    return run


def postprocessor(conf: float, iou: float, max_det: int):
    def post(frame: Frame) -> None:
        if frame.outputs is None:  # unreadable
            return
        t = time.perf_counter()
        frame.boxes, frame.scores, frame.cls = detections(frame.outputs, frame.meta, conf, iou, max_det)
        frame.outputs = None
        frame.ms["post"] = (time.perf_counter() - t) * 1000
    return post


def pipeline(frames, contexts: list, post, depth: int = 0):
    """Run `frames` ((name, BGR image, image file or None) pairs) through read -> pre-process -> NPU ->
    post-process, each stage in its own threads (one NPU thread per context, one pre- and one
    post-processing thread per context), and yield the finished Frames in input order (an unreadable
    one with boxes None). At most `depth` frames (default 4 per context) are between the reader and
    the consumer, reordering included: the reader waits for a slot, so a slow NPU or a slow consumer
    (writing images to an SD card) holds it back. An exception in any thread stops them all and is
    raised here."""
    n = len(contexts)
    depth = depth or FRAMES_PER_CONTEXT * n
    slots, stop, errors = threading.Semaphore(depth), threading.Event(), []
    to_pre, to_npu, to_post, done = (queue.Queue() for _ in range(4))

    def read():
        try:
            it, index = iter(frames), 0
            while True:
                while not slots.acquire(timeout=0.05):
                    if stop.is_set():
                        return
                t = time.perf_counter()
                item = next(it, None)
                if item is None:
                    break
                name, image = item
                to_pre.put(Frame(index, name, image, t, (time.perf_counter() - t) * 1000))
                index += 1
            to_pre.put(END)
        except BaseException as e:
            errors.append(e)
            stop.set()

    threads = [threading.Thread(target=read, daemon=True)]
    threads += _stage([preprocess] * n, to_pre, to_npu, stop, errors)
    threads += _stage([npu(c) for c in contexts], to_npu, to_post, stop, errors)
    threads += _stage([post] * n, to_post, done, stop, errors)
    for t in threads:
        t.start()
    waiting, next_index = {}, 0
    try:
        while True:
            try:
                frame = _get(done, stop)
            except Aborted:
                break
            if frame is END:
                break
            waiting[frame.index] = frame
            while next_index in waiting:
                frame = waiting.pop(next_index)
                next_index += 1
                frame.done = time.perf_counter()
                yield frame
                slots.release()
    finally:
        stop.set()
        for t in threads:
            t.join()
    if errors:
        raise errors[0]


# ------------------------------------------------------------------------------------------ input
def open_source(source: Path):
    """SOURCE -> (what it is, an iterator of (name, BGR image or None)); bad input is refused here,
    before any context is loaded."""
    if not source.exists():
        raise BadInput(f"{source} does not exist; give an image, a folder of images or a video file")
    if source.is_dir():
        images = sorted(p for p in source.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        if not images:
            raise BadInput(f"{source} holds no images ({', '.join(sorted(IMAGE_SUFFIXES))}); give a folder of "
                           f"images, an image or a video file")
        return f"folder of {len(images)} image(s)", ((p.name, p) for p in images)  # read by pre-processing
    if source.suffix.lower() in IMAGE_SUFFIXES:
        image = cv2.imread(str(source))
        if image is None:
            raise BadInput(f"{source} cannot be read as an image; check the file (is it complete?)")
        return "image", iter([(source.name, image)])
    level = cv2.utils.logging.getLogLevel()
    cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_SILENT)  # its own warnings would be noise here
    try:
        cap = cv2.VideoCapture(str(source))
        opened = cap.isOpened()
    finally:
        cv2.utils.logging.setLogLevel(level)
    if not opened:
        raise BadInput(f"OpenCV cannot open {source} as a video; give an image ({', '.join(sorted(IMAGE_SUFFIXES))}), "
                       f"a folder of images, or a video this OpenCV reads (re-encode it: ffmpeg -i {source.name} "
                       f"-c:v libx264 {source.stem}.mp4)")

    def video():
        i = 0
        try:
            while True:
                ok, frame = cap.read()
                if not ok:
                    break
                yield f"{source.stem}_{i:06d}.jpg", frame
                i += 1
        finally:
            cap.release()
    return "video", video()


def board_platform(given: str | None):
    """The SoC this runs on: --platform, else the first rockchip,rkXXXX of /proc/device-tree/compatible
    (an RK3588S says rk3588s, which the toolkit calls rk3588). (name or None, where it came from, the raw list)."""
    if given:
        return given.lower(), "--platform", []
    try:
        compatible = [c for c in Path("/proc/device-tree/compatible").read_bytes().decode(errors="replace")
                      .split("\0") if c]
    except OSError:
        return None, None, []
    for c in compatible:
        match = re.match(r"rockchip,(r[kv]\d{4})", c)
        if match:
            return match.group(1), "/proc/device-tree/compatible", compatible
    return None, "/proc/device-tree/compatible", compatible


def parse_cores(value: str, backend: str) -> list[int]:
    cores = [0, 1, 2] if value == "all" else [int(value)]
    available = NPU_CORES.get(BUNDLE["platform"], 1)
    if backend == "rknn" and max(cores) >= available:
        if value == "all":
            return list(range(available))
        raise BadInput(f"--cores {value}: the {BUNDLE['platform']} has {available} NPU core(s) "
                       f"(0{f'-{available - 1}' if available > 1 else ''}); use --cores "
                       f"{' or '.join(map(str, range(available)))} or all")
    return cores


# ------------------------------------------------------------------------------------------ report
def stats(values) -> dict:
    v = np.asarray(values, dtype=np.float64)
    if not v.size:
        return {"mean": None, "p50": None, "p95": None}
    return {"mean": round(float(v.mean()), 3), "p50": round(float(np.percentile(v, 50)), 3),
            "p95": round(float(np.percentile(v, 95)), 3)}


def throughput(done_times: list[float], started: float, finished: float, workers: int) -> dict:
    """Frames per second: mean over the whole run (frames / wall time, from the first read to the last
    result written), and p50 / p95 over rounds of `workers` consecutive results (single intervals
    would be meaningless: contexts finish in bursts). p95 is the rate of the slowest 5% of rounds."""
    frames = len(done_times)
    wall = finished - started
    out = {"mean": round(frames / wall, 3) if frames and wall > 0 else None, "p50": None, "p95": None}
    k = max(1, workers)
    if frames > k:
        t = np.asarray(done_times)
        per_frame = (t[k:] - t[:-k]) / k
        per_frame = per_frame[per_frame > 0]
        if per_frame.size:
            out["p50"] = round(float(1 / np.percentile(per_frame, 50)), 3)
            out["p95"] = round(float(1 / np.percentile(per_frame, 95)), 3)
    return out


STAGE_NAMES = {"read": "read (decode the image/frame)", "pre": "pre-processing (letterbox)",
               "npu": "NPU (inference)", "post": "post-processing (decode, NMS)", "write": "write (print, draw, save)",
               "end_to_end": "end to end (read -> written)"}


def summary(report: dict) -> str:
    lat = report["latency_ms"]
    rows = [[STAGE_NAMES[k], *(f"{lat[k][s]:.1f}" if lat[k][s] is not None else "-" for s in ("mean", "p50", "p95"))]
            for k in STAGE_NAMES]
    fps = report["throughput_fps"]
    rows.append(["throughput (frames/s)", *(f"{fps[s]:.1f}" if fps[s] is not None else "-"
                                            for s in ("mean", "p50", "p95"))])
    headers = ["ms per frame", "mean", "p50", "p95"]
    cells = [headers] + rows
    widths = [max(len(r[i]) for r in cells) for i in range(4)]
    line = lambda r: "  ".join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(r, widths)))
    title = (f"\n{report['frames']} frame(s), {report['backend']} backend, {len(report['cores'])} context(s) on "
             f"core(s) {', '.join(map(str, report['cores']))}, {report['model']}")
    return "\n".join([title, line(headers), "  ".join("-" * w for w in widths)] + [line(r) for r in rows])


def write_atomically(path: Path, text: str) -> None:
    """Readers see the old file or the new one, never half of one (a board can lose power any time)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        tmp.write_text(text)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


# ------------------------------------------------------------------------------------------ main
def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("source", type=Path)
    p.add_argument("--backend", choices=sorted(BACKENDS), default="rknn",
                   help="rknn: the NPU (rknn-toolkit-lite2); onnx: onnxruntime on the CPU with the bundle's .onnx")
    p.add_argument("--cores", choices=["0", "1", "2", "all"], default="all",
                   help="the NPU core(s), one context each; all: three contexts on cores 0, 1, 2 (default)")
    p.add_argument("--model", type=Path, help="default: the bundle's .rknn (--backend rknn) or .onnx (--backend onnx)")
    p.add_argument("--platform", help="the board's SoC (rk3588, ...), when /proc/device-tree/compatible does not say")
    p.add_argument("--out", type=Path, help="write images with boxes drawn here")
    p.add_argument("--json", type=Path, help="write COCO results here (scored by pycocotools on a PC)")
    p.add_argument("--gt", type=Path, help="val_gt.json / val_coco.json: maps file names to image ids for --json")
    p.add_argument("--report", type=Path, default=Path("board_report.json"),
                   help="latencies, throughput, cores, model, frames, platform (default: ./board_report.json)")
    p.add_argument("--conf", type=float, default=0.25, help="use 0.001 with --json, as the evaluation does")
    p.add_argument("--iou", type=float, default=BUNDLE["iou"])
    p.add_argument("--max-det", type=int, default=BUNDLE["max_det"])
    p.add_argument("--quiet", action="store_true", help="no line per frame")
    a = p.parse_args()
    try:
        check_layout(None)
        soc, soc_from, compatible = board_platform(a.platform)
        if a.backend == "rknn" and soc and soc != BUNDLE["platform"]:
            raise BadInput(f"this bundle was built for the {BUNDLE['platform']} (bundle.json) but this board is an "
                           f"{soc} ({soc_from}); build one for it (make convert ARGS=convert.platform={soc}) and "
                           f"copy that bundle")
        cores = parse_cores(a.cores, a.backend)
        model = a.model
        if model is None:
            name = BUNDLE["model"] if a.backend == "rknn" else BUNDLE.get("onnx")
            if not name:
                raise BadInput("this bundle holds no .onnx model (built before it carried one); pass --model "
                               "artifacts/<exp>/models/<exp>.rknn-head.onnx")
            model = HERE / name
        if not model.is_file():
            raise BadInput(f"{model} does not exist; copy the whole bundle folder, or pass --model")
        kind, frames = open_source(a.source)
        ids = {}
        if a.gt and not a.gt.is_file():
            raise BadInput(f"{a.gt} does not exist; --gt takes val_gt.json (datasets/<name>/yolo/) or val_coco.json")
        if a.gt:
            ids = {im.get("im_name") or im.get("file_name"): im["id"] for im in json.loads(a.gt.read_text())["images"]}
        if kind == "image":
            cores = cores[:1]  # one frame: one context
        contexts = load_contexts(a.backend, model, cores)
    except (BadInput, LayoutError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if a.out:
        a.out.mkdir(parents=True, exist_ok=True)
    results, done, interrupted = [], [], False
    started = time.perf_counter()
    try:
        for f in pipeline(frames, contexts, postprocessor(a.conf, a.iou, a.max_det)):
            if f.boxes is None:
                print(f"{f.name}: unreadable, skipped", file=sys.stderr)
                continue
            t = time.perf_counter()
            if not a.quiet:
                print(f"{f.name}: {len(f.boxes)} person(s), NPU {f.ms['npu']:.1f} ms (core {f.core})")
            if a.json and f.name in ids:
                results += core.to_coco(ids[f.name], f.boxes, f.scores, f.cls, BUNDLE["category_ids"])
            if a.out:
                for b, s in zip(f.boxes.astype(int), f.scores):
                    cv2.rectangle(f.image, tuple(b[:2]), tuple(b[2:]), (0, 255, 0), 2)
                    cv2.putText(f.image, f"person {s:.2f}", (b[0], max(b[1] - 4, 10)), cv2.FONT_HERSHEY_SIMPLEX,
                                0.5, (0, 255, 0), 1)
                cv2.imwrite(str(a.out / f.name), f.image)
            f.image = None
            f.ms["write"] = (time.perf_counter() - t) * 1000
            f.ms["end_to_end"] = (time.perf_counter() - f.started) * 1000
            done.append(f)
    except KeyboardInterrupt:
        interrupted = True  # a live video stopped with Ctrl-C: report what ran
        print(f"interrupted after {len(done)} frame(s)", file=sys.stderr)
    finally:
        finished = time.perf_counter()
        runtime = contexts[0].runtime
        for ctx in contexts:
            ctx.release()
    if a.json:
        write_atomically(a.json, json.dumps(results))
        print(f"{len(results)} detections written to {a.json}")
    report = {
        "schema": 1, "backend": a.backend, "runtime": runtime, "cores": cores, "contexts": len(cores),
        "model": model.name, "source": str(a.source), "source_kind": kind, "frames": len(done),
        "interrupted": interrupted, "conf": a.conf, "iou": a.iou, "max_det": a.max_det,
        "latency_ms": {k: stats([f.ms[k] for f in done]) for k in STAGE_NAMES},
        "throughput_fps": throughput([f.done for f in done], started, finished, len(cores)),
        "wall_s": round(finished - started, 3),
        "frames_per_core": {str(c): sum(f.core == c for f in done) for c in cores},
        "npu_ms_per_core": {str(c): stats([f.ms["npu"] for f in done if f.core == c]) for c in cores},
        "platform": {"soc": soc, "soc_from": soc_from, "compatible": compatible, "machine": platform.machine(),
                     "bundle_platform": BUNDLE["platform"], "cpus": os.cpu_count()},
        "bundle": {k: BUNDLE.get(k) for k in ("experiment", "model", "onnx", "imgsz_hw", "layout", "dtype",
                                              "toolkit_version", "built")},
        "versions": {"python": platform.python_version(), "opencv": cv2.__version__, "numpy": np.__version__},
        "written": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    write_atomically(a.report, json.dumps(report, indent=2) + "\n")
    if done:
        print(summary(report))
    print(f"report written to {a.report}")
    return 130 if interrupted else 0


if __name__ == "__main__":
    sys.exit(main())
