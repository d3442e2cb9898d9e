"""YOLO26n (no DFL, NMS-free one-to-one head) through the chain: the one2one RKNN layout, its CPU
top-k against ultralytics' own, the end2end ONNX, the settings that cannot apply, and (slow) the
demo chain with its INT8 simulator evaluation."""
import json
import sys
from pathlib import Path

import numpy as np
import pytest

from tests.helpers import ROOT, copy_dataset, make, one_error, run_module

from services.common import decode

DEMO26 = str(ROOT / "configs" / "demo-yolo26.yaml")
DEMO = str(ROOT / "configs" / "demo.yaml")


def one2one_outputs(scores: np.ndarray, boxes: np.ndarray, size) -> list[np.ndarray]:
    """(classes, anchors) scores and (4, anchors) distances -> the one2one layout's six outputs."""
    outs, start = [], 0
    for s in decode.STRIDES:
        n = (size[0] // s) * (size[1] // s)
        outs += [boxes[None, :, start:start + n], scores[None, :, start:start + n]]
        start += n
    return outs


def ultralytics_topk(logits: np.ndarray, boxes: np.ndarray, size, conf: float, max_det: int):
    """The reference: ultralytics' own Detect head decodes the same raw branch outputs and selects
    with its top-k (Detect._inference, Detect.postprocess), then the predictor's conf filter."""
    import torch
    from ultralytics.nn.modules.head import Detect
    nc = logits.shape[0]
    head = Detect(nc=nc, reg_max=1, end2end=True, ch=(8, 8, 8)).eval()
    head.end2end, head.max_det, head.stride = True, max_det, torch.tensor([8.0, 16.0, 32.0])
    feats = [torch.zeros(1, 8, size[0] // s, size[1] // s) for s in decode.STRIDES]
    with torch.no_grad():
        y = head._inference({"boxes": torch.from_numpy(boxes)[None], "scores": torch.from_numpy(logits)[None],
                             "feats": feats})
        out = head.postprocess(y.permute(0, 2, 1))[0].numpy()
    out = out[out[:, 4] > conf]
    return out[:, :4], out[:, 4], out[:, 5].astype(np.int64)


@pytest.mark.parametrize("nc, size, conf, max_det", [(1, (256, 256), 0.25, 300), (1, (640, 640), 0.001, 300),
                                                     (3, (128, 256), 0.1, 50), (2, (256, 128), 0.001, 7),
                                                     (1, (256, 256), 0.9, 300)])  # conf leaves < max_det
def test_one2one_selection_is_ultralytics_topk(nc, size, conf, max_det):
    import torch
    rng = np.random.default_rng(nc * 1000 + size[1])
    anchors = sum((size[0] // s) * (size[1] // s) for s in decode.STRIDES)
    # distinct logits (no ties: torch.topk orders equal values as it likes), spread over the whole range
    logits = rng.permutation(np.linspace(-9, 5, nc * anchors)).reshape(nc, anchors).astype(np.float32)
    boxes = rng.uniform(0, 6, (4, anchors)).astype(np.float32)
    scores = torch.from_numpy(logits).sigmoid().numpy()  # what the model's Sigmoid outputs
    outputs = one2one_outputs(scores, boxes, size)
    assert decode.layout_of([o.shape for o in outputs], size) == "one2one"
    b, s, c = decode.postprocess(outputs, "one2one", size, conf, 0.7, max_det)
    rb, rs, rc = ultralytics_topk(logits, boxes, size, conf, max_det)
    assert len(s) == len(rs) == min(max_det, int((scores > conf).sum()))
    np.testing.assert_array_equal(s, rs)
    np.testing.assert_array_equal(c, rc)
    np.testing.assert_allclose(b, rb, atol=1e-4)


def test_one2one_ties_conf_and_max_det():
    """INT8 scores tie often: equal scores keep anchor order (then class), exactly as a plain sort of
    every (anchor, class) pair computes it; nothing at or below conf; at most max_det."""
    size, nc = (128, 128), 2
    rng = np.random.default_rng(7)
    anchors = sum((size[0] // s) * (size[1] // s) for s in decode.STRIDES)
    scores = (rng.integers(0, 40, (nc, anchors)) / 255).astype(np.float32)  # 40 levels: ties everywhere
    boxes = rng.uniform(0, 4, (4, anchors)).astype(np.float32)
    outputs = one2one_outputs(scores, boxes, size)
    centres = np.concatenate([np.stack(np.meshgrid(np.arange(size[1] // s) + 0.5, np.arange(size[0] // s) + 0.5),
                                       -1).reshape(-1, 2) * s for s in decode.STRIDES])
    strides = np.concatenate([[s] * ((size[0] // s) * (size[1] // s)) for s in decode.STRIDES])
    for conf, max_det in ((0.05, 300), (0.0, 1000), (0.1, 25), (0.15, 1), (0.99, 300)):
        pairs = sorted(((float(scores[c, a]), a, c) for a in range(anchors) for c in range(nc)
                        if scores[c, a] > conf), key=lambda t: (-t[0], t[1], t[2]))[:max_det]
        b, s, c = decode.postprocess(outputs, "one2one", size, conf, 0.7, max_det)
        assert [(float(x), int(y)) for x, y in zip(s, c)] == [(p[0], p[2]) for p in pairs]
        want = np.array([[*(centres[a] - boxes[:2, a] * strides[a]), *(centres[a] + boxes[2:, a] * strides[a])]
                         for _, a, _ in pairs]).reshape(-1, 4)
        np.testing.assert_allclose(b, want, rtol=1e-6, atol=1e-4)
        assert len(s) <= max_det and (s > conf).all()


def test_layouts_are_told_apart_by_their_shapes():
    size = (256, 512)
    cells = [(256 // s, 512 // s) for s in decode.STRIDES]
    anchors = sum(h * w for h, w in cells)
    assert decode.layout_of([(1, 5, anchors)], size) == "standard"
    assert decode.layout_of([(1, 6, anchors)], size) == "standard"  # two classes: 4 + 2 channels
    assert decode.layout_of([(1, 300, 6)], size) == "end2end"
    assert decode.layout_of([(1, 4, anchors), (1, 1, anchors)], size) == "normalized"
    assert decode.layout_of([x for h, w in cells for x in ((1, 64, h, w), (1, 1, h, w))], size) == "dfl"
    assert decode.layout_of([x for h, w in cells for x in ((1, 4, h, w), (1, 1, h, w))], size) == "distances"
    assert decode.layout_of([x for h, w in cells for x in ((1, 4, h * w), (1, 1, h * w))], size) == "one2one"
    with pytest.raises(ValueError, match="match no known layout"):
        decode.layout_of([x for h, w in cells for x in ((1, 4, h * w), (1, 1, h * w))], (512, 512))
    for name in ("one2one", "end2end"):
        assert name in decode.LAYOUTS


def test_end2end_output_is_read_as_it_comes():
    """ultralytics' end2end rows (x1, y1, x2, y2, score, class), best first: conf and max_det apply."""
    rows = np.array([[10, 20, 30, 60, 0.9, 0], [0, 0, 5, 5, 0.6, 2], [1, 1, 4, 9, 0.3, 1], [2, 2, 3, 3, 0.0, 0]],
                    np.float32)
    b, s, c = decode.postprocess([rows[None]], "end2end", (64, 64), 0.25, 0.7, 300)
    np.testing.assert_array_equal(b, rows[:3, :4])
    np.testing.assert_array_equal(s, rows[:3, 4])
    assert c.tolist() == [0, 2, 1]
    b, s, c = decode.postprocess([rows[None]], "end2end", (64, 64), 0.001, 0.7, 2)
    assert s.tolist() == pytest.approx([0.9, 0.6]) and c.tolist() == [0, 2]


# ------------------------------------------------------------------------------------ the export
def untrained_yolo26(root: Path, exp: str) -> Path:
    """A YOLO26n checkpoint (random weights, one class) where the export stage looks for best.pt."""
    import torch
    from ultralytics.nn.tasks import DetectionModel
    weights = root / "artifacts" / exp / "weights" / "best.pt"
    weights.parent.mkdir(parents=True)
    torch.manual_seed(0)
    torch.save({"model": DetectionModel("yolo26n.yaml", nc=1, verbose=False)}, weights)
    return weights


def test_head_settings_that_cannot_apply_are_refused_before_any_work(tmp_path):
    for layout, why in (("dfl", "no DFL"), ("distances", "one-to-one head"), ("normalized", "one-to-one head")):
        line = one_error(run_module("export", ["--config", DEMO26, f"export.rknn_head={layout}"], tmp_path))
        assert f"export.rknn_head={layout} does not apply to train.model=yolo26n.yaml" in line and why in line
        assert "set export.rknn_head=one2one" in line
    line = one_error(run_module("dataset", ["--config", DEMO, "export.rknn_head=one2one"], tmp_path))
    assert "one-to-one head" in line and "export.rknn_head=dfl" in line
    line = one_error(run_module("fit", ["--config", DEMO, "train.model=yolo26s.pt"], tmp_path))
    assert "YOLO26 has no DFL" in line
    assert not (tmp_path / "datasets").exists() and not (tmp_path / "artifacts").exists()

    # A checkpoint whose name says nothing (best.pt of a YOLO26 run under a YOLO11 config): the
    # export stage reads the head itself, before it writes anything.
    untrained_yolo26(tmp_path, "demo")
    line = one_error(run_module("export", ["--config", DEMO], tmp_path))
    assert "export.rknn_head=dfl does not apply to artifacts/demo/weights/best.pt" in line
    assert "no DFL" in line and "export.rknn_head=one2one" in line
    assert not (tmp_path / "artifacts/demo/models").exists()


def test_export_cuts_the_graph_before_topk_and_the_cpu_topk_agrees(tmp_path):
    """The RKNN head has no TopK (rknn-toolkit2 2.3.2 does not run it) and its CPU top-k gives the
    standard (end2end) ONNX's detections."""
    import onnx
    import onnxruntime as ort
    untrained_yolo26(tmp_path, "demo-yolo26")
    proc = run_module("export", ["--config", DEMO26], tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    models = tmp_path / "artifacts/demo-yolo26/models"
    manifest = json.loads((models / "manifest.json").read_text())
    assert {k: m["layout"] for k, m in manifest["models"].items()} == {"onnx": "end2end", "onnx-rknn-head": "one2one"}
    head = onnx.load(str(models / "demo-yolo26.rknn-head.onnx"))
    assert "TopK" not in {n.op_type for n in head.graph.node}
    assert [o.name for o in head.graph.output] == ["box_s8", "score_s8", "box_s16", "score_s16", "box_s32", "score_s32"]
    assert "TopK" in {n.op_type for n in onnx.load(str(models / "demo-yolo26.onnx")).graph.node}

    x, _ = decode.preprocess(np.random.default_rng(0).integers(0, 255, (200, 300, 3), dtype=np.uint8), (256, 256))
    results = {}
    for name in ("demo-yolo26.onnx", "demo-yolo26.rknn-head.onnx"):
        session = ort.InferenceSession(str(models / name), providers=["CPUExecutionProvider"])
        y = session.run(None, {"images": x})
        layout = decode.layout_of([o.shape for o in y], (256, 256))
        results[layout] = decode.postprocess(y, layout, (256, 256), 0.0, 0.7, 300)
    (b1, s1, _), (b2, s2, _) = results["end2end"], results["one2one"]
    assert len(s1) == len(s2) == 300
    np.testing.assert_allclose(s1, s2, atol=1e-5)  # order-free: near-equal scores of an untrained head may swap
    for box, score in zip(b1[:50], s1[:50]):
        near = np.abs(s2 - score) <= 1e-5
        assert np.abs(b2[near] - box).max(1).min() <= 1e-2


# ------------------------------------------------------------------------------------ the chain
def metrics(root: Path, exp: str, fmt: str) -> dict:
    return json.loads((root / "artifacts" / exp / "metrics" / f"{fmt}.json").read_text())


def ap50(root: Path, exp: str, fmt: str) -> float:
    return metrics(root, exp, fmt)["sets"]["val"]["coco"]["AP50"]


# The chain's structure does not need a well-trained model: a few epochs at 192 (under 2 minutes, not
# the config's 32 at 256, no plots; AP50 about 0.16 in every format). How well YOLO26n learns the demo and how its
# INT8 model holds against its float one are accuracy bars, measured by benchmarks/yolo26_demo.py at the
# config's full schedule.
CHAIN_EPOCHS = 6
CHAIN_ARGS = f"train.epochs={CHAIN_EPOCHS} train.imgsz=192 export.imgsz=192 evaluate.imgsz=192 train.plots=false"


@pytest.mark.slow
def test_yolo26_demo_chain(demo_dataset, tmp_path):
    """`make train EXP=demo-yolo26`: dataset (shared with the demo), fit, export, evaluate, INT8 convert
    with the simulator evaluation, board bundle: every format evaluated, the exports agreeing."""
    root = copy_dataset(demo_dataset, tmp_path)
    proc = make("train", "EXP=demo-yolo26", f"ARGS={CHAIN_ARGS}",
                root=root, timeout=5400)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    exp = "demo-yolo26"
    yolo26 = {fmt: ap50(root, exp, fmt) for fmt in ("pt", "onnx", "onnx-rknn-head", "rknn")}
    print(f"\ndemo AP50 after {CHAIN_EPOCHS} epochs, YOLO26n: {yolo26}")
    assert json.loads((root / "artifacts" / exp / "train/manifest.json").read_text())["epochs_completed"] == \
        CHAIN_EPOCHS
    assert all(0.0 < v <= 1.0 for v in yolo26.values()), yolo26  # every format finds pedestrians
    # the CPU top-k of the RKNN head gives the detections of ultralytics' in-graph top-k
    assert abs(yolo26["onnx-rknn-head"] - yolo26["onnx"]) <= 0.002

    art = root / "artifacts" / exp
    export = json.loads((art / "models/manifest.json").read_text())
    assert {k: m["layout"] for k, m in export["models"].items()} == {"onnx": "end2end", "onnx-rknn-head": "one2one"}
    parity = export["parity_vs_pt"]  # both ONNX models checked against PyTorch on 8 val images
    assert set(parity) == {"onnx", "onnx-rknn-head"} and all(p["images"] == 8 for p in parity.values()), parity
    assert all(p["top_detections_agree"] for p in parity.values())
    built = json.loads((art / f"models/{exp}_int8_rk3588.manifest.json").read_text())
    assert built["layout"] == "one2one" and any("one2one_cv3" in t for t in built["kept_in_fp16"])
    quant = json.loads((art / "metrics/quantization.json").read_text())
    assert quant["all_scores_zero"] is False
    assert metrics(root, exp, "pt")["ultralytics_val"]["head"] == "one-to-one (nms=False)"

    # the board bundle decodes the simulator's raw outputs to the very detections the evaluation scored
    bundle = json.loads((art / "board/bundle.json").read_text())
    assert bundle["layout"] == "one2one"
    sys.path.insert(0, str(art / "board/runtime"))  # the bundle's copy of decode.py
    try:
        import yolo_core as core
    finally:
        sys.path.remove(str(art / "board/runtime"))
        sys.modules.pop("yolo_core", None)
    import cv2
    sim = np.load(art / "rknn/simulator_outputs.npz")
    evaluated = json.loads((root / metrics(root, exp, "rknn")["sets"]["val"]["detections_file"]).read_text())
    gt = json.loads((root / "datasets/demo/yolo/val_gt.json").read_text())
    ids = {im["im_name"]: im["id"] for im in gt["images"]}
    size = tuple(bundle["imgsz_hw"])
    assert len(sim["names"]) == 2  # the convert stage keeps the simulator's outputs for 2 val images
    for i, name in enumerate(sim["names"]):
        outputs = [sim[f"out_{i}_{k}"] for k in range(6)]
        assert core.layout_of([o.shape for o in outputs], size) == "one2one"
        _, meta = core.preprocess(cv2.imread(str(root / "datasets/demo/yolo/val/images" / str(name))), size)
        boxes, scores, cls = core.postprocess(outputs, "one2one", size, 0.001, bundle["iou"], bundle["max_det"])
        ours = core.to_coco(ids[str(name)], core.scale_boxes(boxes, meta), scores, cls, bundle["category_ids"])
        assert ours and ours == [d for d in evaluated if d["image_id"] == ids[str(name)]]
