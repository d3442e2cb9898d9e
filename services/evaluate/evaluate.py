"""Evaluate a model in any of its forms (pt, onnx; rknn from the convert stage) on the same sets,
with the same pre- and post-processing (services/common/decode.py) and the same scoring (scoring.py).

artifacts/<exp>/metrics/<format>.json              every metric, per evaluation set, plus latency,
                                                   model size, settings and provenance
artifacts/<exp>/metrics/<format>.<set>.detections.json   the COCO results that were scored
artifacts/<exp>/metrics/summary.md                 one row per format, with the drop relative to pt
"""
import json
import math
import os
import shutil
import time
from pathlib import Path

import cv2
import numpy as np
from tqdm import tqdm

from services.common import decode, files, manifest, paths
from services.common.log import MEND_WEIGHTS, UserError, info, reading, table, warn

from . import scoring

STAGE = "evaluate"
EVALUATOR_VERSION = 3  # bump when pre/post-processing or scoring change: metrics are then recomputed
CATEGORY_IDS = [1]  # YOLO class 0 `person` is category 1 in val_gt.json, val_coco.json and COCO


# ---------------------------------------------------------------------------------------- backends
class TorchBackend:
    """The PyTorch checkpoint run as a plain module: its raw head output goes through decode.postprocess,
    like every other format (ultralytics' own predictor would post-process differently).

    A backend maps a (n, 3, h, w) batch to its raw outputs, a list of arrays with batch n, in the
    output layout (decode.LAYOUTS) its `layout` names. A model with a one-to-one head (YOLO26) runs
    through it, NMS-free, as its ONNX models do (layout end2end: the head's own top-k)."""

    name, batch_ok, layout = "pt", True, "standard"

    def __init__(self, weights: Path, max_det: int = 300):
        import torch
        with reading(weights, "a YOLO PyTorch checkpoint", fix_for(weights, "pt")):
            ckpt = torch.load(weights, map_location="cpu", weights_only=False)
            model = (ckpt.get("ema") or ckpt["model"]).float()
            detect = model.model[-1] if hasattr(model, "model") else None
        if getattr(detect, "one2one_cv2", None) is not None:  # before fuse(), which drops the other branch
            model.end2end, detect.max_det, self.layout = True, max_det, "end2end"
        self.model = model.fuse().eval() if hasattr(model, "fuse") else model.eval()
        self.torch = torch
        self.device = manifest.cpu_name()
        torch.set_num_threads(os.cpu_count() or 1)

    def __call__(self, x: np.ndarray) -> list[np.ndarray]:
        with self.torch.inference_mode():
            y = self.model(self.torch.from_numpy(x))
        return [(y[0] if isinstance(y, (list, tuple)) else y).numpy()]


class OnnxBackend:
    name, batch_ok = "onnx", False  # exported with a static batch of 1

    def __init__(self, weights: Path):
        import onnxruntime as ort
        with reading(weights, "an ONNX model", fix_for(weights, "onnx")):
            self.session = ort.InferenceSession(str(weights), providers=["CPUExecutionProvider"])
        first = self.session.get_inputs()[0]
        self.input, self.size = first.name, tuple(first.shape[2:])
        try:
            self.layout = decode.layout_of([o.shape for o in self.session.get_outputs()], self.size)
        except (ValueError, TypeError) as e:
            raise UserError(f"{paths.rel(weights)}: {e}; export it again with `make export FORCE=1`")
        self.device = f"onnxruntime CPU ({manifest.cpu_name()})"

    def __call__(self, x: np.ndarray) -> list[np.ndarray]:
        return self.session.run(None, {self.input: x})


def fix_for(weights: Path, fmt: str) -> str:
    """What mends an unreadable model: the stage that wrote it, or, for the user's own file, another file."""
    parts = Path(paths.rel(weights)).parts
    if parts[:1] == ("artifacts",) and len(parts) == 4 and parts[2] == ("weights" if fmt == "pt" else "models"):
        return MEND_WEIGHTS if fmt == "pt" else "`make export FORCE=1` writes it again"
    return f"set evaluate.weights to a readable {'YOLO .pt checkpoint' if fmt == 'pt' else '.onnx model'}"


def backend_for(fmt: str, weights: Path, max_det: int = 300):
    if not weights.is_file():
        hint = "run `make fit`" if fmt == "pt" else "run `make export`"
        raise UserError(f"no {fmt} model at {paths.rel(weights)}; {hint} first, or set evaluate.weights=PATH")
    suffix = ".pt" if fmt == "pt" else ".onnx"
    if weights.suffix != suffix:
        raise UserError(f"evaluate.format={fmt} but {paths.rel(weights)} is not a {suffix} file; "
                        f"set evaluate.format to match the weights")
    backend = TorchBackend(weights, max_det) if fmt == "pt" else OnnxBackend(weights)
    backend.name = fmt
    return backend


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
    """Run a backend over the images of one set; COCO results and per-image latency (ms)."""
    dets, latency = [], []
    batch = e["batch"] if backend.batch_ok else 1
    for start in tqdm(range(0, len(images), batch), desc=f"{backend.name:>5}", unit="batch",
                      mininterval=0.5, leave=False):
        chunk = images[start:start + batch]
        t0 = time.perf_counter()
        inputs, metas = [], []
        for im in chunk:
            path = folder / (im.get("im_name") or im["file_name"])  # the miss-rate files say im_name, COCO file_name
            image = cv2.imread(str(path))
            if image is None:
                raise UserError(f"cannot read {paths.rel(path)}; rebuild the dataset (`make dataset FORCE=1`)")
            x, meta = decode.preprocess(image, size)
            inputs.append(x)
            metas.append(meta)
        out = backend(np.concatenate(inputs))
        for j, (im, meta) in enumerate(zip(chunk, metas)):
            boxes, scores, cls = decode.postprocess([o[j:j + 1] for o in out], backend.layout, size, e["conf"],
                                                  e["iou"], e["max_det"])
            dets += decode.to_coco(im["id"], decode.scale_boxes(boxes, meta), scores, cls, CATEGORY_IDS)
        latency += [(time.perf_counter() - t0) * 1000 / len(chunk)] * len(chunk)
    return dets, latency


# ---------------------------------------------------------------------------------------- stage
def formats_to_run(cfg: dict, root: Path) -> list[tuple[str, Path]]:
    e, exp = cfg["evaluate"], cfg["experiment"]
    art = paths.artifacts_dir(exp, root)
    default = {"pt": art / "weights" / "best.pt", "onnx": art / "models" / f"{exp}.onnx",
               "onnx-rknn-head": art / "models" / f"{exp}.rknn-head.onnx"}
    if e["weights"] and e["format"] == "all":
        raise UserError(f"evaluate.weights={e['weights']} needs evaluate.format=pt or onnx (which kind of model "
                        f"it is); evaluate.format=all evaluates the experiment's own models")
    if e["format"] != "all":
        weights = Path(e["weights"]) if e["weights"] else default[e["format"]]
        return [(e["format"], weights if weights.is_absolute() else root / weights)]
    found = [(f, p) for f, p in default.items() if p.is_file()]
    if not found:
        raise UserError(f"no model to evaluate in {paths.rel(art, root)} (weights/best.pt, models/{exp}.onnx); "
                        f"run `make fit` first")
    return found


def run(cfg: dict, root: Path = paths.ROOT, force: bool = False) -> list[dict]:
    results = [evaluate_one(cfg, fmt, weights, root, force) for fmt, weights in formats_to_run(cfg, root)]
    write_summary(paths.artifacts_dir(cfg["experiment"], root) / "metrics", root)
    return results


def evaluate_one(cfg: dict, fmt: str, weights: Path, root: Path, force: bool = False, backend=None,
                 size=None) -> dict:
    """Metrics for one model. The convert stage passes its own backend (the RKNN simulator) and the
    input size the model was built for."""
    e = cfg["evaluate"]
    size = size or decode.input_size(e["imgsz"] or cfg["export"]["imgsz"] or cfg["train"]["imgsz"])
    if size[0] % 32 or size[1] % 32:
        raise UserError(f"evaluate.imgsz={list(size)}: height and width must be multiples of 32 (the stride)")
    sets = evaluation_sets(cfg, root)
    out_dir = paths.artifacts_dir(cfg["experiment"], root) / "metrics"
    if not weights.is_file() and backend is None:
        backend_for(fmt, weights)  # says what to run first
    # which model is the weights' checksum; the rest is what changes the numbers
    settings = {k: e[k] for k in ("sets", "conf", "iou", "max_det", "batch")}
    fingerprint = {"evaluator_version": EVALUATOR_VERSION, "evaluate": settings, "imgsz_hw": list(size),
                   "weights_sha256": files.sha256_file(weights),
                   "ground_truth_sha256": {n: [files.sha256_file(f) for f in (g, c) if f is not None]
                                           for n, (_, g, c) in sets.items()}}
    old = files.read_json(out_dir / f"{fmt}.json")
    if old and old.get("fingerprint") == fingerprint and not force:
        info(STAGE, f"{paths.rel(out_dir / (fmt + '.json'), root)} is up to date (same model, sets and "
                    f"settings); FORCE=1 evaluates again")
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
                           "category_ids": CATEGORY_IDS},
              "sets": {}}
    all_latency = []
    for name, (folder, gt_file, coco_file) in sets.items():
        # The image list comes from the miss-rate ground truth where there is one (its ids are the
        # official ones), else from the COCO file.
        truth = gt_file if gt_file is not None else coco_file
        with reading(truth, f"the {name} set's ground truth", "`make dataset FORCE=1` writes it again"):
            gt = scoring.load_json(truth)
            if not isinstance(gt, dict) or "images" not in gt:
                raise ValueError("no image list")
        dets, latency = detect(backend, gt["images"], folder, size, e)
        all_latency += latency
        try:
            scoring.check_ids(gt, dets)
        except ValueError as err:
            raise UserError(f"set {name}: {err}")
        if not dets:
            warn(STAGE, f"{fmt} on {name}: no detections at all; AP is 0"
                        + (" and the miss rate 100 %" if gt_file is not None else ""))
        det_file = out_dir / f"{fmt}.{name}.detections.json"
        files.atomic_write_text(det_file, json.dumps(dets))
        result["sets"][name] = {
            "images": len(gt["images"]), "detections": len(dets), "detections_file": paths.rel(det_file, root),
            "coco": scoring.coco_ap(coco_file, dets),
        }
        if gt_file is not None:
            mr = scoring.miss_rates(gt, dets)
            result["sets"][name]["miss_rate"] = {k: v["MR"] for k, v in mr.items()}
            result["sets"][name]["mr_fppi_curves"] = {k: {"fppi": v["fppi"], "miss_rate": v["miss_rate"]}
                                                      for k, v in mr.items()}
        else:
            result["sets"][name]["miss_rate"] = None
            result["sets"][name]["miss_rate_note"] = ("not applicable: the CityPersons miss rate is defined on "
                                                      "CityPersons' annotations (height, visibility) only")
    lat = np.asarray(all_latency or [math.nan])
    result["latency_ms_per_image"] = {"mean": round(float(lat.mean()), 2), "p50": round(float(np.percentile(lat, 50)), 2),
                                      "p95": round(float(np.percentile(lat, 95)), 2),
                                      "includes": "read, letterbox, inference, decode, NMS", "device": backend.device}
    if fmt == "pt" and "val" in sets:
        result["ultralytics_val"] = ultralytics_val(cfg, weights, size, root, end2end=backend.layout == "end2end")
    result.update(started=started, finished=manifest.now(), wall_s=round(time.perf_counter() - t0, 2))
    files.atomic_write_json(out_dir / f"{fmt}.json", result)
    for name, s in result["sets"].items():
        mr = f", MR-2 Reasonable {100 * s['miss_rate']['Reasonable']:.2f} %" if s["miss_rate"] else ""
        info(STAGE, f"{fmt} on {name}: AP50 {s['coco']['AP50']:.3f}, AP {s['coco']['AP']:.3f}{mr}  "
                    f"({s['images']} images, {result['latency_ms_per_image']['mean']:.1f} ms/image)")
    return result


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
    scratch = files.temp_name(paths.artifacts_dir(cfg["experiment"], root) / "ultralytics-val")
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
          "(lower is better; n/a on COCO, where it is not defined). Latency: read + letterbox + inference + decode + NMS, per image, on the device "
          "named in each metrics file.", "",
          "| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    md += ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]
    files.atomic_write_text(metrics_dir / "summary.md", "\n".join(md) + "\n")
    print(table(headers, rows, title=f"\n{paths.rel(metrics_dir / 'summary.md', root)}"))
