#!/usr/bin/env python3
"""Pedestrian detection on the RK3588 NPU with rknn-toolkit-lite2 (copied into the board bundle as detect.py).

    python3 detect.py SOURCE [--out DIR] [--json results.json --gt val_gt.json] [--conf 0.25]

SOURCE is an image, a folder of images, or a video file. Letterbox and decode are those of the
evaluation that measured this model in the simulator (yolo_core.py is a copy of the project's
services/common/decode.py), so the board's numbers can be compared with metrics/rknn.json.
"""
import argparse
import json
import re
import sys
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


class LayoutError(Exception):
    pass


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


def runtime_check(rknn) -> None:
    """The NPU driver/runtime must be at least the toolkit version the model was built with."""
    try:
        sdk = rknn.get_sdk_version()
    except Exception:
        return
    built = BUNDLE["toolkit_version"]
    match = re.search(r"(\d+)\.(\d+)\.(\d+)", str(sdk or ""))
    found = [int(x) for x in match.groups()] if match else []
    want = [int(x) for x in built.split(".")[:3]]
    if found and found < want:
        print(f"warning: the board's RKNN runtime is {'.'.join(map(str, found))} but the model was built with "
              f"rknn-toolkit2 {built}; update librknnrt.so to {built} or newer if results look wrong",
              file=sys.stderr)


def frames(source: Path):
    if source.is_dir():
        for p in sorted(source.iterdir()):
            if p.suffix.lower() in IMAGE_SUFFIXES:
                yield p.name, cv2.imread(str(p))
    elif source.suffix.lower() in IMAGE_SUFFIXES:
        yield source.name, cv2.imread(str(source))
    else:
        cap = cv2.VideoCapture(str(source))
        i = 0
        while True:
            ok, frame = cap.read()
            if not ok:
                break
            yield f"{source.stem}_{i:06d}.jpg", frame
            i += 1


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("source", type=Path)
    p.add_argument("--model", type=Path, default=HERE / BUNDLE["model"])
    p.add_argument("--out", type=Path, help="write images with boxes drawn here")
    p.add_argument("--json", type=Path, help="write COCO results here (scored by pycocotools on a PC)")
    p.add_argument("--gt", type=Path, help="val_gt.json / val_coco.json: maps file names to image ids for --json")
    p.add_argument("--conf", type=float, default=0.25, help="use 0.001 with --json, as the evaluation does")
    p.add_argument("--iou", type=float, default=BUNDLE["iou"])
    p.add_argument("--max-det", type=int, default=BUNDLE["max_det"])
    a = p.parse_args()
    try:
        check_layout(None)
    except LayoutError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2

    from rknnlite.api import RKNNLite
    rknn = RKNNLite()
    if rknn.load_rknn(str(a.model)) != 0 or rknn.init_runtime(core_mask=RKNNLite.NPU_CORE_0) != 0:
        print(f"error: cannot load {a.model} on the NPU; is this an RK3588 with the RKNN runtime installed?",
              file=sys.stderr)
        return 2
    runtime_check(rknn)
    ids = {}
    if a.gt:
        ids = {im.get("im_name") or im.get("file_name"): im["id"] for im in json.loads(a.gt.read_text())["images"]}
    if a.out:
        a.out.mkdir(parents=True, exist_ok=True)
    results, latencies = [], []
    for name, image in frames(a.source):
        if image is None:
            print(f"{name}: unreadable, skipped", file=sys.stderr)
            continue
        x, meta = core.preprocess(image, SIZE)
        nhwc = np.rint(x[0].transpose(1, 2, 0) * 255).astype(np.uint8)[None]
        t0 = time.perf_counter()
        outputs = rknn.inference(inputs=[nhwc], data_format="nhwc")
        ms = (time.perf_counter() - t0) * 1000
        if not latencies:
            try:
                check_layout(outputs)
            except LayoutError as e:
                print(f"error: {e}", file=sys.stderr)
                rknn.release()
                return 2
        boxes, scores, cls = detections(outputs, meta, a.conf, a.iou, a.max_det)
        latencies.append(ms)
        print(f"{name}: {len(boxes)} person(s), NPU {ms:.1f} ms")
        if a.json and name in ids:
            results += core.to_coco(ids[name], boxes, scores, cls, BUNDLE["category_ids"])
        if a.out:
            for b, s in zip(boxes.astype(int), scores):
                cv2.rectangle(image, tuple(b[:2]), tuple(b[2:]), (0, 255, 0), 2)
                cv2.putText(image, f"person {s:.2f}", (b[0], max(b[1] - 4, 10)), cv2.FONT_HERSHEY_SIMPLEX, 0.5,
                            (0, 255, 0), 1)
            cv2.imwrite(str(a.out / name), image)
    rknn.release()
    if a.json:
        a.json.write_text(json.dumps(results))
        print(f"{len(results)} detections written to {a.json}")
    if latencies:
        print(f"{len(latencies)} image(s): NPU latency mean {np.mean(latencies):.1f} ms, "
              f"p50 {np.percentile(latencies, 50):.1f} ms, p95 {np.percentile(latencies, 95):.1f} ms")
    return 0


if __name__ == "__main__":
    sys.exit(main())
