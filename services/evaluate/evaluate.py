"""Evaluate a model in any of its forms (pt, onnx; rknn from the convert stage) on the same sets,
with the same pre- and post-processing (services/common/decode.py) and the same scoring (scoring.py).

artifacts/<exp>/metrics/<format>.json              every metric, per evaluation set, plus latency,
                                                   model size, settings and provenance
artifacts/<exp>/metrics/<format>.<set>.detections.json   the COCO results that were scored
artifacts/<exp>/metrics/summary.md                 one row per format, with the drop relative to pt
"""
import json
import math
import shutil
import time
from pathlib import Path

import cv2
import numpy as np
from tqdm import tqdm

from services.common import backends, decode, files, manifest, paths, uptodate
from services.common.layout import Experiment
from services.common.log import UserError, info, reading, table, warn

from . import scoring

STAGE = "evaluate"
EVALUATOR_VERSION = 3  # bump when pre/post-processing or scoring change: metrics are then recomputed
CATEGORY_IDS = [1]  # YOLO class 0 `person` is category 1 in val_gt.json, val_coco.json and COCO


# The model formats' backends live in services/common/backends.py (predict and the board script use them too).
backend_for = backends.backend_for


# ---------------------------------------------------------------------------------------- sets
def evaluation_sets(cfg: dict, root: Path) -> dict:
    """name -> (images folder, miss-rate ground truth or None, COCO ground truth).

    val: the dataset's official val split, scored with COCO AP and the CityPersons miss rate.
    coco_person: COCO val2017 persons (datasets/coco/yolo/, built by the dataset stage), COCO AP only:
    the miss rate's setups (height, visibility) are defined on CityPersons' annotations alone."""
    sets = {}
    for name in cfg["evaluate"]["sets"]:
        if name == "val":
            yolo = paths.yolo_dir(cfg["dataset"]["name"], root)
            need = [yolo / "val" / "images", yolo / "val_gt.json", yolo / "val_coco.json"]
            if not all(p.exists() for p in need):
                raise UserError(f"evaluation set 'val' needs {paths.rel(yolo, root)}/val_gt.json, val_coco.json "
                                f"and val/images; run `make dataset` first")
            sets[name] = (need[0], need[1], need[2])
        elif name == "coco_person":
            yolo = paths.yolo_dir("coco", root)
            need = [yolo / "val" / "images", yolo / "person_val2017.json"]
            if not all(p.exists() for p in need):
                others = [s for s in cfg["evaluate"]["sets"] if s != name]
                drop = f'drop the set with ARGS="evaluate.sets=[{", ".join(others)}]"' if others else \
                    'choose another set with ARGS="evaluate.sets=[val]"'
                raise UserError(f"evaluation set 'coco_person' needs {paths.rel(yolo, root)}/person_val2017.json "
                                f"and val/images; run `make dataset` first (it downloads COCO val2017), or {drop}")
            sets[name] = (need[0], None, need[1])
    return sets


def detect(backend, images: list[dict], folder: Path, size, e: dict):
    """Run a backend over the images of one set; COCO results and per-image latency (ms). With
    evaluate.tiles > 1 each frame is cut into that many tiles, each a model input of its own, and
    their detections merged into the frame's (services/common/decode.py)."""
    dets, latency = [], []
    batch = e["batch"] if backend.batch_ok else 1
    for start in tqdm(range(0, len(images), batch), desc=f"{backend.name:>5}", unit="batch",
                      mininterval=0.5, leave=False):
        chunk = images[start:start + batch]
        t0 = time.perf_counter()
        inputs, metas = [], []
        for im in chunk:  # the miss-rate files say im_name, COCO file_name
            x, tiles = frame_inputs(folder / (im.get("im_name") or im["file_name"]), size, e)
            inputs.append(x)
            metas.append(tiles)
        out = run_batched(backend, np.concatenate(inputs), batch)
        first = 0
        for im, tiles in zip(chunk, metas):
            per_tile = [decode.postprocess([o[k:k + 1] for o in out], backend.layout, size, e["conf"], e["iou"],
                                           e["max_det"]) for k in range(first, first + len(tiles))]
            first += len(tiles)
            boxes, scores, cls = decode.merge_tiles(per_tile, tiles, e["iou"], e["max_det"])
            dets += decode.to_coco(im["id"], boxes, scores, cls, CATEGORY_IDS)
        latency += [(time.perf_counter() - t0) * 1000 / len(chunk)] * len(chunk)
    return dets, latency


def frame_inputs(path: Path, size, e: dict):
    """One frame read and cut into evaluate.tiles letterboxed inputs (one: the whole frame)."""
    image = cv2.imread(str(path))
    if image is None:
        raise UserError(f"cannot read {paths.rel(path)}; rebuild the dataset (`make dataset FORCE=1`)")
    try:
        return decode.preprocess_tiles(image, size, e["tiles"], e["tile_overlap"])
    except ValueError as err:
        raise UserError(f"{paths.rel(path)}: evaluate.{err}") from None


def run_batched(backend, x: np.ndarray, batch: int) -> list:
    """The backend over x in batches of at most `batch` (a frame's tiles can outnumber it); the
    outputs joined back along the batch axis."""
    if len(x) <= batch:
        return backend(x)
    parts = [backend(x[i:i + batch]) for i in range(0, len(x), batch)]
    return [np.concatenate([p[k] for p in parts]) for k in range(len(parts[0]))]


# ---------------------------------------------------------------------------------------- stage
def formats_to_run(cfg: dict, root: Path) -> list[tuple[str, Path]]:
    e, exp = cfg["evaluate"], Experiment.of(cfg, root)
    default = {"pt": exp.best, "onnx": exp.onnx, "onnx-rknn-head": exp.rknn_head_onnx}
    if e["weights"] and e["format"] == "all":
        raise UserError(f"evaluate.weights={e['weights']} needs evaluate.format=pt or onnx (which kind of model "
                        f"it is); evaluate.format=all evaluates the experiment's own models")
    if e["format"] != "all":
        weights = Path(e["weights"]) if e["weights"] else default[e["format"]]
        return [(e["format"], weights if weights.is_absolute() else root / weights)]
    found = [(f, p) for f, p in default.items() if p.is_file()]
    if not found:
        raise UserError(f"no model to evaluate in {paths.rel(exp.artifacts, root)} (weights/best.pt, "
                        f"models/{exp.name}.onnx); run `make fit` first")
    return found


def run(cfg: dict, root: Path = paths.ROOT, force: bool = False) -> list[dict]:
    results = [evaluate_one(cfg, fmt, weights, root, force) for fmt, weights in formats_to_run(cfg, root)]
    write_summary(Experiment.of(cfg, root).metrics, root)
    return results


def evaluate_one(cfg: dict, fmt: str, weights: Path, root: Path, force: bool = False, backend=None,
                 size=None) -> dict:
    """Metrics for one model. The convert stage passes its own backend (the RKNN simulator) and the
    input size the model was built for."""
    e, exp = cfg["evaluate"], Experiment.of(cfg, root)
    size = size or decode.input_size(e["imgsz"] or cfg["export"]["imgsz"] or cfg["train"]["imgsz"])
    sets = evaluation_sets(cfg, root)
    if not weights.is_file() and backend is None:
        backend_for(fmt, weights)  # says what to run first
    fingerprint = evaluation_fingerprint(e, size, weights, sets)
    old = uptodate.check(STAGE, exp.metrics_of(fmt), fingerprint, root, force,
                         f"{paths.rel(exp.metrics_of(fmt), root)} is up to date (same model, sets and "
                         f"settings); FORCE=1 evaluates again",
                         aside=backend is None)  # the convert stage's evaluation: its outputs, set aside by it
    if old:
        return old
    backend = backend or backend_for(fmt, weights, e["max_det"])
    started, t0 = manifest.now(), time.perf_counter()
    result = {**manifest.provenance(STAGE, cfg, ["numpy", "onnxruntime", "torch", "pycocotools",
                                                   "faster-coco-eval", "opencv-python"]),
              "fingerprint": fingerprint,
              "format": fmt, "weights": paths.rel(weights, root), "model_bytes": weights.stat().st_size,
              "device": backend.device,
              "settings": {"imgsz_hw": list(size), "conf": e["conf"], "iou": e["iou"], "max_det": e["max_det"],
                           "batch": e["batch"] if backend.batch_ok else 1, "letterbox": "ultralytics, pad 114",
                           "tiles": e["tiles"], "tile_overlap": e["tile_overlap"],
                           "input_pixels_per_frame": e["tiles"] * size[0] * size[1], "category_ids": CATEGORY_IDS},
              "sets": {}}
    all_latency = []
    for name, (folder, gt_file, coco_file) in sets.items():
        result["sets"][name], latency = score_set(backend, fmt, name, folder, gt_file, coco_file, size, e, exp)
        all_latency += latency
    result["latency_ms_per_image"] = {**latency_summary(all_latency),
                                      "includes": "read, letterbox (every tile), inference, decode, NMS",
                                      "device": backend.device}
    if fmt == "pt" and "val" in sets:
        result["ultralytics_val"] = ultralytics_val(cfg, weights, size, root, end2end=backend.layout == "end2end")
    result.update(started=started, finished=manifest.now(), wall_s=round(time.perf_counter() - t0, 2))
    result["outputs"] = uptodate.record([exp.detections(fmt, name) for name in sets], root)
    files.atomic_write_json(exp.metrics_of(fmt), result)
    for name, s in result["sets"].items():
        mr = f", MR-2 Reasonable {100 * s['miss_rate']['Reasonable']:.2f} %" if s["miss_rate"] else ""
        tiled = f", {e['tiles']} tiles" if e["tiles"] > 1 else ""
        info(STAGE, f"{fmt} on {name}{tiled}: AP50 {s['coco']['AP50']:.3f}, AP {s['coco']['AP']:.3f}{mr}  "
                    f"({s['images']} images, {result['latency_ms_per_image']['mean']:.1f} ms/image)")
    return result


def evaluation_fingerprint(e: dict, size, weights: Path, sets: dict) -> dict:
    """Which model (the weights' checksum) and everything that changes its numbers."""
    settings = {k: e[k] for k in ("sets", "conf", "iou", "max_det", "batch", "tiles", "tile_overlap")}
    return {"evaluator_version": EVALUATOR_VERSION, "evaluate": settings, "imgsz_hw": list(size),
            "weights_sha256": files.sha256_file(weights),
            "ground_truth_sha256": {n: [files.sha256_file(f) for f in (g, c) if f is not None]
                                    for n, (_, g, c) in sets.items()}}


def score_set(backend, fmt: str, name: str, folder: Path, gt_file, coco_file, size, e: dict, exp: Experiment):
    """One set's metrics (COCO AP; the miss rate where the set has CityPersons' annotations), and the
    per-image latency. The image list comes from the miss-rate ground truth where there is one (its
    ids are the official ones), else from the COCO file."""
    truth = gt_file if gt_file is not None else coco_file
    with reading(truth, f"the {name} set's ground truth", "`make dataset FORCE=1` writes it again"):
        gt = scoring.load_json(truth)
        if not isinstance(gt, dict) or "images" not in gt:
            raise ValueError("no image list")
    dets, latency = detect(backend, gt["images"], folder, size, e)
    try:
        scoring.check_ids(gt, dets)
    except ValueError as err:
        raise UserError(f"set {name}: {err}")
    if not dets:
        warn(STAGE, f"{fmt} on {name}: no detections at all; AP is 0"
                    + (" and the miss rate 100 %" if gt_file is not None else ""))
    det_file = exp.detections(fmt, name)
    files.atomic_write_text(det_file, json.dumps(dets))
    result = {"images": len(gt["images"]), "detections": len(dets), "detections_file": paths.rel(det_file, exp.root),
              "coco": scoring.coco_ap(coco_file, dets)}
    if gt_file is not None:
        mr = scoring.miss_rates(gt, dets)
        result["miss_rate"] = {k: v["MR"] for k, v in mr.items()}
        result["mr_fppi_curves"] = {k: {"fppi": v["fppi"], "miss_rate": v["miss_rate"]} for k, v in mr.items()}
    else:
        result["miss_rate"] = None
        result["miss_rate_note"] = ("not applicable: the CityPersons miss rate is defined on "
                                    "CityPersons' annotations (height, visibility) only")
    return result, latency


def latency_summary(latency: list) -> dict:
    lat = np.asarray(latency or [math.nan])
    return {"mean": round(float(lat.mean()), 2), "p50": round(float(np.percentile(lat, 50)), 2),
            "p95": round(float(np.percentile(lat, 95)), 2)}


def ultralytics_val(cfg, weights: Path, size, root: Path, end2end: bool = False) -> dict:
    """ultralytics' own mAP on the same split, reported beside the pycocotools one so users see that
    they differ (its own matching and interpolation, rect batches, its own NMS settings). An NMS-free
    model is validated through its one-to-one head (nms=False), the head the evaluation reads."""
    from services.common import yolo_env
    yolo_env.prepare(root)
    from ultralytics import YOLO
    data = paths.yolo_dir(cfg["dataset"]["name"], root) / f"{cfg['dataset']['name']}.yaml"
    # Its validator makes a folder per call (runs/detect/val, val-2, ...): give it a scratch one
    # outside runs/, the folder TensorBoard serves, and remove it.
    scratch = files.temp_name(Experiment.of(cfg, root).artifacts / "ultralytics-val")
    try:
        r = YOLO(str(weights)).val(data=str(data), split="test", imgsz=max(size), batch=cfg["evaluate"]["batch"],
                                   device="cpu", plots=False, verbose=False, save_json=False,
                                   project=str(scratch), name="val", exist_ok=True,
                                   **({"nms": False} if end2end else {}))
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return {"mAP50": float(r.box.map50), "mAP50-95": float(r.box.map), "split": "test (the official val)",
            "head": "one-to-one (nms=False)" if end2end else "standard, with NMS",
            "note": "ultralytics' internal metric, not pycocotools: for comparison only"}


def write_summary(metrics_dir: Path, root: Path) -> None:
    """summary.md: one row per format and set, with the AP50 drop relative to pt."""
    rows, base = [], {}
    order = ["pt", "onnx", "onnx-rknn-head", "rknn"]
    found = sorted(metrics_dir.glob("*.json"), key=lambda p: (order.index(p.stem) if p.stem in order else 99, p.stem))
    for p in found:
        m = files.read_json(p)
        if not m or "sets" not in m:
            continue
        for name, s in m["sets"].items():
            if m["format"] == "pt":
                base[name] = s["coco"]["AP50"]
            drop = (f"{s['coco']['AP50'] - base[name]:+.3f}" if name in base and m["format"] != "pt" else "")
            mr = s.get("miss_rate")  # None on sets the miss rate does not apply to (COCO)
            rows.append([m["format"], name, s["images"], f"{s['coco']['AP50']:.3f}", f"{s['coco']['AP']:.3f}",
                         drop, f"{100 * mr['Reasonable']:.2f}" if mr else "n/a",
                         f"{100 * mr['All']:.2f}" if mr else "n/a",
                         f"{m['latency_ms_per_image']['mean']:.1f}", f"{m['model_bytes'] / 1e6:.1f}"])
    headers = ["format", "set", "images", "AP50", "AP50-95", "ΔAP50 vs pt", "MR-2 Reasonable %", "MR-2 All %",
               "ms/image", "MB"]
    md = ["# Evaluation summary", "",
          "AP50 and AP50-95: pycocotools COCO bbox AP. MR-2: the official CityPersons log-average miss rate "
          "(lower is better; n/a on COCO, where it is not defined). Latency: read + letterbox + inference + "
          "decode + NMS, per image, on the device named in each metrics file.", "",
          "| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    md += ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]
    files.atomic_write_text(metrics_dir / "summary.md", "\n".join(md) + "\n")
    print(table(headers, rows, title=f"\n{paths.rel(metrics_dir / 'summary.md', root)}"))
