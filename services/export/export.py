"""best.pt -> two ONNX models (static input, batch 1, the export section's opset, simplified with
onnxslim as ultralytics does):

artifacts/<exp>/models/<exp>.onnx            the standard ultralytics head, for ONNX users:
    input  images (1, 3, h, w) float32 RGB in [0, 1]
    output output0 (1, 4 + classes, anchors): cx, cy, w, h in input pixels, then class scores;
           for NMS-free models (YOLO26) ultralytics' end2end output instead, (1, max_det, 6): x1, y1,
           x2, y2, score, class of the one-to-one head's top-k (what `yolo export nms=False` writes)
artifacts/<exp>/models/<exp>.rknn-head.onnx  the quantization-friendly head for RKNN INT8, in the
    layout export.rknn_head names (services/common/decode.py LAYOUTS). The default, dfl, is
    Rockchip's rknn_model_zoo layout: per stride 8, 16, 32, box_s<s> (1, 64, h/s, w/s) DFL logits
    and score_s<s> (1, classes, h/s, w/s) sigmoid scores; the CPU does softmax and decode in float.
    YOLO26 has no DFL and an NMS-free one-to-one head whose top-k (ONNX TopK) rknn-toolkit2 does not
    run: its layout, one2one, cuts the graph before the top-k and keeps that branch's per-stride box
    distances and sigmoid scores; the CPU does the top-k (services/common/decode.py `one2one`).
  Every INT8 tensor has one scale. Boxes (0..imgsz) and scores (0..1) in one tensor round every
  score to 0 (the "INT8 model detects nothing" failure); boxes normalised to the whole input round
  each coordinate to 1/255 of it (8 px in a 2048-px frame). Per-stride outputs with small ranges
  keep sub-pixel steps at any input size (docs/thesis/convert.md: "The RKNN head").

Parity with the PyTorch model goes into artifacts/<exp>/metrics/export.json.
"""
import shutil
import time
from pathlib import Path

import numpy as np

from services.common import backends, decode, files, manifest, paths, uptodate
from services.common.layout import Experiment
from services.common.log import MEND_WEIGHTS, UserError, table

STAGE = "export"


def load_model(weights: Path, max_det: int = 300):
    if not weights.is_file():
        raise UserError(f"no {paths.rel(weights)} yet; run `make fit` first")
    model, _ = backends.load_checkpoint(weights, max_det, "the trained weights", MEND_WEIGHTS)
    for m in model.modules():  # what ultralytics' exporter sets on the head: one static tensor out
        if m.__class__.__name__ in ("Detect", "Segment", "Pose", "OBB"):
            m.export, m.format, m.dynamic = True, "onnx", False
    return model


def check_head(model, layout: str, weights: Path) -> None:
    """export.rknn_head must fit the trained head: a DFL layout needs DFL bins, one2one a one-to-one
    head, and a one-to-one model is deployed through that head only. One line, before any export."""
    detect = model.model[-1]
    end2end, bins = getattr(detect, "end2end", False), getattr(detect, "reg_max", 16)
    name = paths.rel(weights)
    if end2end and layout != "one2one":
        why = f"has no DFL (reg_max {bins})" if layout == "dfl" and bins == 1 else "has an NMS-free one-to-one head"
        raise UserError(f"export.rknn_head={layout} does not apply to {name}: it {why} (YOLO26); "
                        f"set export.rknn_head=one2one")
    if end2end and bins != 1:
        raise UserError(f"export.rknn_head=one2one takes a DFL-free one-to-one head (YOLO26); {name} has "
                        f"{bins} DFL bins per side; export it with ultralytics (`yolo export`) instead")
    if not end2end and layout == "one2one":
        raise UserError(f"export.rknn_head=one2one needs a one-to-one (NMS-free) head, which {name} has not "
                        f"(YOLO11 and older); set export.rknn_head=dfl")


class RknnHead:
    """Wraps the model so that its Detect head returns the outputs of an RKNN head layout
    (decode.LAYOUTS) instead of one decoded tensor:

    dfl        per stride: the box branch's DFL logits and the sigmoid class scores (Rockchip's
               rknn_model_zoo layout); softmax, expectation and decode run on the CPU in float
    distances  per stride: the DFL expectation (box side distances in stride units, 0..15) and scores
    one2one    per stride, flattened to (1, channels, cells): the one-to-one branch's box distances
               (it has no DFL) and sigmoid scores; the graph ends before ultralytics' top-k
    normalized cx, cy, w, h divided by the input size, and scores (the first RKNN head; its INT8 boxes
               are rounded to 1/255 of the input, kept only to be measured against)
    """

    def __new__(cls, model, size, layout: str):
        import copy
        import torch
        model = copy.deepcopy(model)
        detect = model.model[-1]

        def per_stride(x):
            outs = []
            for i in range(detect.nl):
                if layout == "one2one":  # reg_max 1: the box branch gives the distances themselves
                    box, score = detect.one2one_cv2[i](x[i]), detect.one2one_cv3[i](x[i]).sigmoid()
                    outs += [box.flatten(2), score.flatten(2)]
                    continue
                box, score = detect.cv2[i](x[i]), detect.cv3[i](x[i]).sigmoid()
                if layout == "distances":
                    b, _, gh, gw = box.shape
                    box = detect.dfl(box.view(b, 4 * detect.reg_max, gh * gw)).view(b, 4, gh, gw)
                outs += [box, score]
            return tuple(outs)

        class _Head(torch.nn.Module):
            def __init__(self):
                super().__init__()
                self.model = model
                h, w = size
                self.register_buffer("norm", torch.tensor([w, h, w, h], dtype=torch.float32).view(1, 4, 1))
                if layout in ("dfl", "distances", "one2one"):
                    detect.forward = per_stride  # the instance attribute wins over Detect.forward

            def forward(self, x):
                y = self.model(x)
                if layout in ("dfl", "distances", "one2one"):
                    return y
                y = y[0] if isinstance(y, (list, tuple)) else y
                return y[:, :4] / self.norm, y[:, 4:]

        return _Head().eval()


def output_names(layout: str) -> list[str]:
    if layout == "normalized":
        return ["boxes", "scores"]
    return [f"{kind}_s{s}" for s in decode.STRIDES for kind in ("box", "score")]


def export_onnx(module, size, opset: int, out: Path, output_names, simplifier: str) -> None:
    """torch -> ONNX (legacy exporter: it honours old opsets such as 12) -> simplified, atomically."""
    import onnx
    import torch
    with files.atomic_path(out) as tmp:
        with torch.no_grad():
            torch.onnx.export(module, torch.zeros(1, 3, *size), str(tmp), opset_version=opset,
                              input_names=["images"], output_names=output_names, dynamo=False,
                              do_constant_folding=True)
        model = onnx.load(str(tmp))
        if simplifier == "onnxslim":
            import onnxslim
            model = onnxslim.slim(model)
        elif simplifier == "onnxsim":
            import onnxsim
            model, ok = onnxsim.simplify(model)
            if not ok:
                raise UserError("onnxsim could not validate the simplified model; use export.simplify=onnxslim")
        onnx.checker.check_model(model)
        onnx.save(model, str(tmp))


def parity(modules: dict, size, onnx_files: dict, images: list[Path], e: dict) -> dict:
    """Per ONNX model, on val images: max |torch - onnx| over its raw outputs (each against the torch
    module it was exported from), and whether its top detections agree with the PyTorch model's (same
    count, IoU >= 0.9 pairwise, score within 0.01), through the same decode every backend uses."""
    import onnxruntime as ort
    import torch
    import cv2
    sessions = {k: ort.InferenceSession(str(p), providers=["CPUExecutionProvider"]) for k, p in onnx_files.items()}
    out = {k: {"max_abs_diff": 0.0, "top_detections_agree": True, "images": len(images)} for k in sessions}
    for path in images:
        x, _ = decode.preprocess(cv2.imread(str(path)), size)
        refs = {}
        with torch.no_grad():
            for k, module in modules.items():
                y = module(torch.from_numpy(x))
                refs[k] = [t.numpy() for t in (y if isinstance(y, (list, tuple)) else [y])]
        ref_layout = decode.layout_of([a.shape for a in refs["onnx"][:1]], size)  # standard or end2end
        ref_top = decode.postprocess(refs["onnx"][:1], ref_layout, size, 0.25, e["iou"], 10)
        for k, s in sessions.items():
            y = s.run(None, {"images": x})
            if k == "onnx" and ref_layout == "end2end":
                # top-k rows: near-equal scores may come in another order; compare each row with its
                # closest counterpart
                a, b = y[0][0], refs[k][0][0]
                diff = float(np.abs(a[:, None] - b[None]).max(-1).min(1).max())
            else:
                diff = max(float(np.abs(a - b).max()) for a, b in zip(y, refs[k]))
            out[k]["max_abs_diff"] = max(out[k]["max_abs_diff"], diff)
            top = decode.postprocess(y, decode.layout_of([a.shape for a in y], size), size, 0.25, e["iou"], 10)
            agree = len(top[0]) == len(ref_top[0]) and all(
                _iou(a, b) >= 0.9 and abs(sa - sb) <= 0.01
                for a, b, sa, sb in zip(top[0], ref_top[0], top[1], ref_top[1]))
            out[k]["top_detections_agree"] &= bool(agree)
    return out


def _iou(a, b) -> float:
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    return inter / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter + 1e-9)


def run(cfg: dict, root: Path = paths.ROOT, force: bool = False) -> dict:
    e, x, exp = cfg["evaluate"], cfg["export"], Experiment.of(cfg, root)
    size = decode.input_size(x["imgsz"] or cfg["train"]["imgsz"])
    targets = {"onnx": exp.onnx, "onnx-rknn-head": exp.rknn_head_onnx}
    fingerprint = {"export": x, "imgsz_hw": list(size),
                   "weights_sha256": files.sha256_file(exp.best) if exp.best.is_file() else None}
    if x["rknn_head"] == "one2one":  # the end2end ONNX holds evaluate.max_det rows
        fingerprint["max_det"] = e["max_det"]
    old = uptodate.check(STAGE, exp.export_manifest, fingerprint, root, force,
                         f"{paths.rel(exp.models, root)} is up to date (same best.pt and export settings); "
                         f"FORCE=1 exports again")
    if old:
        return old
    model = load_model(exp.best, e["max_det"])
    check_head(model, x["rknn_head"], exp.best)
    started, t0 = manifest.now(), time.perf_counter()
    exp.models.mkdir(parents=True, exist_ok=True)
    modules = {"onnx": model, "onnx-rknn-head": RknnHead(model, size, x["rknn_head"])}
    names = {"onnx": ["output0"], "onnx-rknn-head": output_names(x["rknn_head"])}
    timings = {}
    for name, target in targets.items():
        t = time.perf_counter()
        export_onnx(modules[name], size, x["opset"], target, names[name], x["simplify"])
        timings[name] = round(time.perf_counter() - t, 2)
    layouts = {"onnx": "end2end" if model.end2end else "standard", "onnx-rknn-head": x["rknn_head"]}
    val_images = sorted((paths.yolo_dir(cfg["dataset"]["name"], root) / "val" / "images").glob("*.png"))[:8]
    checks = parity(modules, size, targets, val_images, e) if val_images else {}
    result = {**manifest.provenance(STAGE, cfg, ["torch", "onnx", "onnxslim", "onnxruntime", "ultralytics"]),
              "fingerprint": fingerprint, "weights": paths.rel(exp.best, root), "imgsz_hw": list(size),
              "opset": x["opset"], "simplifier": x["simplify"],
              "models": {k: {"file": paths.rel(p, root), "bytes": p.stat().st_size, "outputs": names[k],
                             "layout": layouts[k], "layout_means": decode.LAYOUTS[layouts[k]]}
                         for k, p in targets.items()},
              "parity_vs_pt": checks, "seconds": timings, "started": started, "finished": manifest.now(),
              "wall_s": round(time.perf_counter() - t0, 2), "outputs": uptodate.record(list(targets.values()), root)}
    files.atomic_write_json(exp.export_parity, {"parity_vs_pt": checks, "imgsz_hw": list(size), "opset": x["opset"]})
    files.atomic_write_json(exp.export_manifest, result)  # last: it is what says the stage is done
    print(table(["model", "MB", "max |pt - onnx|", "top detections agree", "export s"],
                [[paths.rel(targets[k], root), f"{targets[k].stat().st_size / 1e6:.1f}",
                  f"{checks.get(k, {}).get('max_abs_diff', float('nan')):.2e}",
                  checks.get(k, {}).get("top_detections_agree", "n/a"), timings[k]] for k in targets],
                title=f"\nexport (opset {x['opset']}, {size[0]}x{size[1]}, {x['simplify']})"))
    shutil.rmtree(exp.models / "__pycache__", ignore_errors=True)
    return result
