"""Frames through read -> pre-process -> inference -> post-process, each stage in threads of its own,
out in input order, with a bounded number of frames in flight."""
import queue
import threading
import time
from pathlib import Path

import cv2
import numpy as np

from . import yolo_core as core
from .errors import BadInput

FRAMES_PER_CONTEXT = 4  # frames in flight per context: enough to keep each stage busy, bounded
END = object()  # what a stage passes on after the last frame


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


class Aborted(Exception):
    """Another thread failed (or the consumer stopped): this one leaves."""


# ------------------------------------------------------------------------------------------ the stages
def detections(outputs, meta, layout: str, size: tuple[int, int], conf: float, iou: float, max_det: int):
    """The model's raw outputs for one image -> original-pixel xyxy boxes, scores, classes, decoded
    exactly as the simulator evaluation decoded them (yolo_core.postprocess)."""
    boxes, scores, cls = core.postprocess(outputs, layout, size, conf, iou, max_det)
    return core.scale_boxes(boxes, meta), scores, cls


def preprocessor(size: tuple[int, int]):
    """The pre-processing of one frame: read the image if it is a file (several threads decode PNGs
    faster than one), then letterbox with the board's OpenCV into the uint8 RGB NHWC tensor the .rknn
    takes (it normalises inside); meta is what scale_boxes needs, as yolo_core.preprocess returns it."""
    def pre(frame: Frame) -> None:
        t = read(frame)
        if frame.image is None:
            return
        padded, r, pad = core.letterbox(frame.image, size)
        frame.tensor = cv2.cvtColor(padded, cv2.COLOR_BGR2RGB)[None]
        frame.meta = (r, pad, frame.image.shape[:2])
        frame.ms["pre"] = (time.perf_counter() - t) * 1000
    return pre


def read(frame: Frame) -> float:
    """A frame given as a path is read here, timed as `read`; returns when pre-processing starts."""
    t = time.perf_counter()
    if isinstance(frame.image, Path):
        frame.image = cv2.imread(str(frame.image))
        frame.ms["read"] = (time.perf_counter() - t) * 1000
        t = time.perf_counter()
    return t


def tiled_preprocessor(size: tuple[int, int], tiles: int, overlap: float):
    """--tiles: the frame cut into `tiles` overlapping tiles, each letterboxed as a whole frame would be
    (yolo_core.letterbox_tiles); the tensor holds them all, (tiles, h, w, 3) uint8 RGB, one per context
    of the TiledContext, and meta each tile's (scale_boxes meta, window origin)."""
    def pre(frame: Frame) -> None:
        t = read(frame)
        if frame.image is None:
            return
        try:
            parts = core.letterbox_tiles(frame.image, size, tiles, overlap)
        except ValueError as e:  # a frame of another size than the first, which prepare() checked
            raise BadInput(f"{frame.name}: --{e}") from None
        frame.tensor = np.stack([cv2.cvtColor(padded, cv2.COLOR_BGR2RGB) for padded, _, _ in parts])
        frame.meta = [(meta, origin) for _, meta, origin in parts]
        frame.ms["pre"] = (time.perf_counter() - t) * 1000
    return pre


def tiled_postprocessor(layout: str, size: tuple[int, int], conf: float, iou: float, max_det: int):
    """--tiles: each tile decoded as a frame would be, then merged into the frame's detections
    (yolo_core.merge_tiles: boxes cut by a tile edge joined, one NMS over the frame)."""
    def post(frame: Frame) -> None:
        if frame.outputs is None:  # unreadable
            return
        t = time.perf_counter()
        per_tile = [core.postprocess(outputs, layout, size, conf, iou, max_det) for outputs in frame.outputs]
        frame.boxes, frame.scores, frame.cls = core.merge_tiles(per_tile, frame.meta, iou, max_det)
        frame.outputs = None
        frame.ms["post"] = (time.perf_counter() - t) * 1000
    return post


def npu(ctx):
    """Inference of one frame on the context `ctx`."""
    def run(frame: Frame) -> None:
        if frame.tensor is None:  # unreadable
            return
        t = time.perf_counter()
        frame.outputs = ctx.run(frame.tensor)
        frame.ms["npu"] = (time.perf_counter() - t) * 1000
        frame.core, frame.tensor = ctx.core, None
    return run


def postprocessor(layout: str, size: tuple[int, int], conf: float, iou: float, max_det: int):
    """The post-processing of one frame: decode and NMS (detections)."""
    def post(frame: Frame) -> None:
        if frame.outputs is None:  # unreadable
            return
        t = time.perf_counter()
        frame.boxes, frame.scores, frame.cls = detections(frame.outputs, frame.meta, layout, size, conf, iou, max_det)
        frame.outputs = None
        frame.ms["post"] = (time.perf_counter() - t) * 1000
    return post


# ------------------------------------------------------------------------------------------ the threads
def _get(q: queue.Queue, stop: threading.Event):
    while True:
        try:
            return q.get(timeout=0.05)
        except queue.Empty:
            if stop.is_set():
                raise Aborted from None


def _reader(frames, slots: threading.Semaphore, outq: queue.Queue, stop: threading.Event, errors: list):
    """The reading thread: (name, image) pairs -> Frames, each once a slot is free, so that a slow
    stage or a slow consumer holds the reader back instead of filling memory."""
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
                outq.put(Frame(index, name, image, t, (time.perf_counter() - t) * 1000))
                index += 1
            outq.put(END)
        except BaseException as e:
            errors.append(e)
            stop.set()
    return threading.Thread(target=read, daemon=True)


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


def _in_order(done: queue.Queue, slots: threading.Semaphore, stop: threading.Event):
    """The finished frames in input order. A frame's slot is freed once the consumer has taken it and
    asked for the next: the frames waiting for an earlier one to finish count as in flight."""
    waiting, next_index = {}, 0
    while True:
        try:
            frame = _get(done, stop)
        except Aborted:
            return
        if frame is END:
            return
        waiting[frame.index] = frame
        while next_index in waiting:
            frame = waiting.pop(next_index)
            next_index += 1
            frame.done = time.perf_counter()
            yield frame
            slots.release()


# ------------------------------------------------------------------------------------------ pipeline
def pipeline(frames, contexts: list, pre, post, depth: int = 0):
    """Run `frames` ((name, BGR image or image file) pairs) through read -> pre-process -> NPU ->
    post-process, each stage in its own threads (one NPU thread per context, one pre- and one
    post-processing thread per context), and yield the finished Frames in input order (an unreadable
    one with boxes None). At most `depth` frames (default 4 per context) are between the reader and
    the consumer, reordering included: the reader waits for a slot, so a slow NPU or a slow consumer
    (writing images to an SD card) holds it back. An exception in any thread stops them all and is
    raised here."""
    n = len(contexts)
    slots, stop, errors = threading.Semaphore(depth or FRAMES_PER_CONTEXT * n), threading.Event(), []
    to_pre, to_npu, to_post, done = (queue.Queue() for _ in range(4))
    threads = [_reader(frames, slots, to_pre, stop, errors)]
    threads += _stage([pre] * n, to_pre, to_npu, stop, errors)
    threads += _stage([npu(c) for c in contexts], to_npu, to_post, stop, errors)
    threads += _stage([post] * n, to_post, done, stop, errors)
    for t in threads:
        t.start()
    try:
        yield from _in_order(done, slots, stop)
    finally:
        stop.set()
        for t in threads:
            t.join()
    if errors:
        raise errors[0]
