"""Pedestrian detection on the RK3588 NPU with rknn-toolkit-lite2 (copied into the board bundle as detect.py).

    python3 detect.py SOURCE [--cores 0|1|2|all] [--tiles N] [--out DIR] [--json results.json --gt val_gt.json]
                             [--conf 0.25]

SOURCE is an image, a folder of images, or a video file. Frames go through a pipeline: one thread
reads the video (the pre-processing threads read a folder's images, in parallel), pre-processing
(letterbox, OpenCV), the NPU (one context per core, each bound to its core;
`--cores all` runs three contexts on cores 0, 1 and 2, on consecutive frames) and post-processing
(decode, NMS) run in parallel, and results come out in frame order. At most a few frames per context
are in flight: a slow stage holds the reader back instead of filling memory.

`--tiles N` (sliced inference) cuts each frame into N overlapping tiles along its long side, each
letterboxed into the model input, and runs them at once, one context per tile, each on its own NPU
core (tile i on the i-th of --cores, round the cores again when there are more tiles than cores); the
tiles' detections are merged into the frame's (boxes cut by a tile edge joined, one NMS over the
frame). Frames then pass one at a time, each in about one tile's NPU time. Its default is the setting
the model was evaluated with (bundle.json).

At the end it prints the latency of each stage and the throughput (mean, p50, p95) and writes them
to board_report.json (--report), with the cores, model, frames and platform.

Letterbox and decode are those of the evaluation that measured this model in the simulator
(yolo_core.py is a copy of the project's services/common/decode.py), so the board's numbers can be
compared with metrics/rknn.json. `--backend onnx` runs the same pipeline on the CPU with onnxruntime
and the float ONNX model the .rknn was built from (in the bundle), one CPU thread per context: on a
PC, without an NPU.

In a bundle this module is runtime/detect.py, and the detect.py at the bundle's root calls main with
the bundle's folder; elsewhere, main(folder) runs on the bundle in `folder`.
"""
import argparse
import hashlib
import json
import os
import platform
import signal
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from . import yolo_core as core
from .backends import BACKENDS, TiledContext, load_contexts
from .bundle import (Bundle, board_platform, check_layout, check_platform, image_ids, load_bundle, model_path,
                     parse_cores)
from .errors import BadInput, LayoutError
from .pipeline import Frame, pipeline, postprocessor, preprocessor, tiled_postprocessor, tiled_preprocessor
from .report import STAGE_NAMES, stats, summary, throughput, write_atomically
from .source import first_frame_size, open_source


@dataclass
class Run:
    """What the checks settled before the first frame is read."""
    soc: str | None  # the board's SoC, where it came from, /proc/device-tree/compatible
    soc_from: str | None
    compatible: list
    cores: list[int]
    model: Path
    kind: str  # what SOURCE is: image, folder of n image(s), video
    frames: object  # iterator of (name, image)
    ids: dict  # file name -> image id, for --json
    contexts: list


@dataclass
class Outcome:
    """What the pipeline did: the frames written (with their timings), the COCO results, whether
    Ctrl-C stopped it, when it started and finished, the runtime that ran it."""
    done: list
    results: list
    interrupted: bool
    started: float
    finished: float
    runtime: str


def main(folder: Path, argv: list[str] | None = None) -> int:
    """`python3 detect.py ...` on the bundle in `folder`. Exit code 0; 2 for bad input, said in one
    line before any work; 130 when Ctrl-C stopped it (the report of the frames done is written)."""
    try:
        bundle = load_bundle(folder)
    except BadInput as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    args = parse_args(bundle, argv)
    try:
        run = prepare(args, bundle)
    except (BadInput, LayoutError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    try:
        outcome = detect_frames(args, bundle, run)
    except BadInput as e:  # a later frame --tiles cannot cut (the first one was checked)
        print(f"error: {e}", file=sys.stderr)
        return 2
    return finish(args, bundle, run, outcome)


def parse_args(bundle: Bundle, argv: list[str] | None) -> argparse.Namespace:
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
    p.add_argument("--iou", type=float, default=bundle.manifest["iou"])
    p.add_argument("--max-det", type=int, default=bundle.manifest["max_det"])
    p.add_argument("--tiles", type=int, default=bundle.manifest.get("tiles", 1),
                   help="cut each frame into this many overlapping tiles, one per NPU core, and merge their "
                        "detections (default: as evaluated, bundle.json; 1: the whole frame letterboxed)")
    p.add_argument("--tile-overlap", type=float, default=bundle.manifest.get("tile_overlap", 0.1),
                   help="the share of a tile its neighbour also covers, 0 to below 1")
    p.add_argument("--quiet", action="store_true", help="no line per frame")
    return p.parse_args(argv)


def prepare(args: argparse.Namespace, bundle: Bundle) -> Run:
    """Every check that can refuse the run, cheapest first, then the contexts loaded (which checks
    the model's outputs): bad input is one line before any frame is read, and before any file is
    written."""
    check_layout(bundle.layout, bundle.size)
    check_tile_settings(args)
    soc, soc_from, compatible = board_platform(args.platform)
    if args.backend == "rknn":  # onnxruntime runs anywhere
        check_platform(bundle, soc, soc_from)
    cores = parse_cores(args.cores, args.backend, bundle.platform)
    model = model_path(bundle, args.backend, args.model)
    kind, frames = open_source(args.source)
    ids = image_ids(args.gt)
    if args.tiles > 1:
        frames = check_tiles(args, bundle, frames)
        cores = [cores[i % len(cores)] for i in range(args.tiles)]  # one tile per core
        return Run(soc, soc_from, compatible, cores, model, kind, frames, ids,
                   [TiledContext(load_contexts(args.backend, model, cores, bundle))])
    if kind == "image":
        cores = cores[:1]  # one frame: one context
    contexts = load_contexts(args.backend, model, cores, bundle)
    return Run(soc, soc_from, compatible, cores, model, kind, frames, ids, contexts)


def check_tile_settings(args: argparse.Namespace) -> None:
    """Also without tiling (--tiles 1): a --tiles 0 or a bad overlap is a mistake, not a request."""
    if not 1 <= args.tiles <= 16 or not 0 <= args.tile_overlap < 1:
        raise BadInput(f"--tiles {args.tiles} --tile-overlap {args.tile_overlap}: tiles go from 1 to 16 and the "
                       f"overlap is the share of a tile its neighbour also covers, 0 to below 1 (e.g. 0.1)")


def check_tiles(args: argparse.Namespace, bundle: Bundle, frames):
    """--tiles and --tile-overlap against the first frame and the model input; the frames again."""
    size, frames = first_frame_size(frames)
    if size is not None:
        try:
            core.check_tiles(size, bundle.size, args.tiles, args.tile_overlap)
        except ValueError as e:
            raise BadInput(f"--{e}") from None
    return frames


def detect_frames(args: argparse.Namespace, bundle: Bundle, run: Run) -> Outcome:
    """The pipeline over every frame, each written as it comes out (a line, the drawn image, its
    COCO results). Ctrl-C stops a live video: what ran is still reported."""
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
    done, results, interrupted = [], [], False
    if args.tiles > 1:
        pre = tiled_preprocessor(bundle.size, args.tiles, args.tile_overlap)
        post = tiled_postprocessor(bundle.layout, bundle.size, args.conf, args.iou, args.max_det)
    else:
        pre = preprocessor(bundle.size)
        post = postprocessor(bundle.layout, bundle.size, args.conf, args.iou, args.max_det)
    started = time.perf_counter()
    writing = {"now": False, "stop": False}

    def on_ctrl_c(signum, stack):  # a frame whose line is out is written whole and counted, then we stop
        if writing["now"]:
            writing["stop"] = True
        else:
            raise KeyboardInterrupt

    main = threading.current_thread() is threading.main_thread()  # only there can Python take a signal
    previous = signal.signal(signal.SIGINT, on_ctrl_c) if main else None
    try:
        for frame in pipeline(run.frames, run.contexts, pre, post):
            if frame.boxes is None:
                print(f"{frame.name}: unreadable, skipped", file=sys.stderr)
                continue
            writing["now"] = True
            try:
                results += write_frame(frame, args, run.ids, bundle.manifest["category_ids"])
                done.append(frame)
            finally:
                writing["now"] = False
            if writing["stop"]:
                raise KeyboardInterrupt
    except KeyboardInterrupt:
        interrupted = True
        print(f"interrupted after {len(done)} frame(s)", file=sys.stderr)
    finally:
        if main:
            signal.signal(signal.SIGINT, previous)
        finished = time.perf_counter()
        runtime = run.contexts[0].runtime
        for ctx in run.contexts:
            ctx.release()
    return Outcome(done, results, interrupted, started, finished, runtime)


def write_frame(frame: Frame, args: argparse.Namespace, ids: dict, category_ids: list) -> list:
    """One finished frame: its line, its image with the boxes drawn (--out); returns its COCO results
    (--json, for the frames --gt names). Its time goes into the write stage and end to end."""
    t = time.perf_counter()
    if not args.quiet:
        where = (f"cores {', '.join(map(str, frame.core))}" if isinstance(frame.core, list)  # --tiles
                 else f"core {frame.core}")
        print(f"{frame.name}: {len(frame.boxes)} person(s), NPU {frame.ms['npu']:.1f} ms ({where})")
    results = []
    if args.json and frame.name in ids:
        results = core.to_coco(ids[frame.name], frame.boxes, frame.scores, frame.cls, category_ids)
    if args.out:
        for b, s in zip(frame.boxes.astype(int), frame.scores):
            cv2.rectangle(frame.image, tuple(b[:2]), tuple(b[2:]), (0, 255, 0), 2)
            cv2.putText(frame.image, f"person {s:.2f}", (b[0], max(b[1] - 4, 10)), cv2.FONT_HERSHEY_SIMPLEX,
                        0.5, (0, 255, 0), 1)
        cv2.imwrite(str(args.out / frame.name), frame.image)
    frame.image = None  # the pipeline keeps no decoded image longer than it needs to
    frame.ms["write"] = (time.perf_counter() - t) * 1000
    frame.ms["end_to_end"] = (time.perf_counter() - frame.started) * 1000
    return results


def finish(args: argparse.Namespace, bundle: Bundle, run: Run, outcome: Outcome) -> int:
    """The COCO results (--json), board_report.json and the summary table; the exit code."""
    if args.json:
        write_atomically(args.json, json.dumps(outcome.results))
        print(f"{len(outcome.results)} detections written to {args.json}")
    report = board_report(args, bundle, run, outcome)
    write_atomically(args.report, json.dumps(report, indent=2) + "\n")
    if outcome.done:
        print(summary(report))
    print(f"report written to {args.report}")
    return 130 if outcome.interrupted else 0


def sha256(path: Path) -> str:
    """The model file's checksum: the report on the PC matches it against the bundle's record."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def board_report(args: argparse.Namespace, bundle: Bundle, run: Run, outcome: Outcome) -> dict:
    """board_report.json: latencies and throughput, with what the report on the PC needs to say what
    ran where (backend, runtime, cores, model, source, board, bundle, versions)."""
    done, cores = outcome.done, run.cores

    def on(frame: Frame, c: int) -> bool:  # a tiled frame ran on every core of its tiles
        return c in frame.core if isinstance(frame.core, list) else frame.core == c

    return {
        "schema": 1, "backend": args.backend, "runtime": outcome.runtime, "cores": cores, "contexts": len(cores),
        "tiles": args.tiles, "tile_overlap": args.tile_overlap,
        "model": run.model.name, "model_sha256": sha256(run.model), "source": str(args.source),
        "source_kind": run.kind, "frames": len(done),
        "interrupted": outcome.interrupted, "conf": args.conf, "iou": args.iou, "max_det": args.max_det,
        "latency_ms": {k: stats([f.ms[k] for f in done]) for k in STAGE_NAMES},
        "throughput_fps": throughput([f.done for f in done], outcome.started, outcome.finished, len(run.contexts)),
        "wall_s": round(outcome.finished - outcome.started, 3),
        "frames_per_core": {str(c): sum(on(f, c) for f in done) for c in cores},
        "npu_ms_per_core": {str(c): stats([f.ms["npu"] for f in done if on(f, c)]) for c in cores},
        "platform": {"soc": run.soc, "soc_from": run.soc_from, "compatible": run.compatible,
                     "machine": platform.machine(), "bundle_platform": bundle.platform, "cpus": os.cpu_count()},
        "bundle": {k: bundle.manifest.get(k) for k in ("experiment", "model", "onnx", "imgsz_hw", "layout", "dtype",
                                                       "toolkit_version", "built")},
        "versions": {"python": platform.python_version(), "opencv": cv2.__version__, "numpy": np.__version__},
        "written": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
