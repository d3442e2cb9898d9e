"""The evaluation stage: shared pre/post-processing, pycocotools AP, the miss rate, bad input."""
import json
from pathlib import Path

import numpy as np
import pytest

from tests.helpers import ROOT, copy_dataset, demo_root, one_error, run_module
from services.common import decode
from services.evaluate import scoring

DEMO = str(ROOT / "configs" / "demo.yaml")
AP50_BAR = 0.8


def test_letterbox_is_pixel_identical_to_ultralytics():
    from ultralytics.data.augment import LetterBox
    rng = np.random.default_rng(0)
    for shape, size in (((256, 512, 3), (256, 256)), ((1024, 2048, 3), (384, 640)), ((100, 60, 3), (128, 96))):
        image = rng.integers(0, 256, shape, dtype=np.uint8)
        ours, r, (left, top) = decode.letterbox(image, size)
        theirs = LetterBox(new_shape=size, auto=False, scaleup=True, center=True)(image=image)
        assert ours.shape == theirs.shape and np.array_equal(ours, theirs), (shape, size)


def test_decode_and_nms_agree_with_ultralytics():
    import torch
    from ultralytics.utils.nms import non_max_suppression
    rng = np.random.default_rng(1)
    anchors = 500
    xy = rng.uniform(0, 256, (anchors, 2))
    wh = rng.uniform(5, 60, (anchors, 2))
    raw = np.concatenate([xy, wh, rng.uniform(0, 1, (anchors, 1)) ** 4], 1).T.astype(np.float32)  # (5, A)
    boxes, scores, cls = decode.decode(raw, conf=0.001, iou=0.7, max_det=300)
    ref = non_max_suppression(torch.from_numpy(raw[None]), conf_thres=0.001, iou_thres=0.7, max_det=300)[0].numpy()
    order = np.argsort(-ref[:, 4], kind="stable")
    assert len(boxes) == len(ref)
    np.testing.assert_allclose(boxes, ref[order, :4], atol=1e-3)
    np.testing.assert_allclose(scores, ref[order, 4], atol=1e-6)


def test_opencv_nms_keeps_exactly_what_the_numpy_nms_kept():
    """OpenCV's compiled NMS against the numpy loop it replaced, with tied INT8-like scores and the
    max_det cut-off that lets it stop early."""
    rng = np.random.default_rng(2)
    for trial in range(60):
        n = int(rng.integers(1, 2500))
        xy = rng.uniform(0, 640, (n, 2))
        boxes = np.concatenate([xy, xy + rng.uniform(2, 150, (n, 2))], 1).astype(np.float32)
        scores = (rng.integers(1, 256, n) / 255 if trial % 2 else rng.uniform(0, 1, n)).astype(np.float32)
        for iou in (0.5, 0.7):
            ref = decode.nms_reference(boxes, scores, iou)
            assert np.array_equal(decode.nms(boxes, scores, iou), ref)
            for cap in (1, 50, 300):
                assert np.array_equal(decode.nms(boxes, scores, iou, cap), ref[:cap])


def test_rknn_head_layouts_decode_to_the_standard_heads_detections():
    """Per-stride DFL logits and per-stride distances, decoded on the CPU, give the detections that
    ultralytics' own decode (DFL, anchors, strides) gives for the same raw head values."""
    import torch
    from ultralytics.nn.modules import DFL
    from ultralytics.utils.tal import dist2bbox, make_anchors
    rng = np.random.default_rng(3)
    size = (128, 256)
    grids = [(size[0] // s, size[1] // s) for s in (8, 16, 32)]
    logits = [rng.normal(0, 2, (1, 64, h, w)).astype(np.float32) for h, w in grids]
    scores = [(1 / (1 + np.exp(-rng.normal(-3, 2, (1, 1, h, w))))).astype(np.float32) for h, w in grids]
    feats = [torch.zeros(1, 1, h, w) for h, w in grids]
    anchors, strides = (a.transpose(0, 1) for a in make_anchors(feats, torch.tensor([8.0, 16.0, 32.0]), 0.5))
    raw = torch.cat([torch.from_numpy(x).view(1, 64, -1) for x in logits], -1)
    dist = DFL(16)(raw)
    standard = torch.cat([dist2bbox(dist, anchors.unsqueeze(0), xywh=True, dim=1) * strides,
                          torch.cat([torch.from_numpy(x).view(1, 1, -1) for x in scores], -1)], 1).numpy()
    distances = [d.reshape(1, 4, h, w) for d, (h, w) in
                 zip(np.split(dist.numpy(), np.cumsum([h * w for h, w in grids])[:-1], axis=2), grids)]
    ref = decode.postprocess([standard], "standard", size, 0.05, 0.7, 300)
    assert len(ref[0]) > 20
    for layout, outputs in (("dfl", [t for pair in zip(logits, scores) for t in pair]),
                            ("distances", [t for pair in zip(distances, scores) for t in pair])):
        assert decode.layout_of([o.shape for o in outputs], size) == layout
        got = decode.postprocess(outputs, layout, size, 0.05, 0.7, 300)
        np.testing.assert_allclose(got[0], ref[0], atol=1e-3)
        np.testing.assert_array_equal(got[1], ref[1])
    with pytest.raises(ValueError, match="no known layout"):
        decode.layout_of([(1, 64, 16, 32)] * 6, size)


def test_boxes_scale_back_to_original_pixels():
    image = np.zeros((256, 512, 3), np.uint8)
    _, meta = decode.preprocess(image, (256, 256))  # scale 0.5, 64 px pad above and below
    back = decode.scale_boxes(np.array([[0.0, 64.0, 256.0, 192.0], [-10, 0, 300, 300]]), meta)
    np.testing.assert_allclose(back, [[0, 0, 512, 256], [0, 0, 512, 256]])


# ------------------------------------------------------------------------------ the demo run
def metrics(root, fmt="pt"):
    return json.loads((root / "artifacts" / "demo" / "metrics" / f"{fmt}.json").read_text())


def test_demo_pt_metrics_meet_the_bar_and_match_pycocotools_exactly(demo_run):
    root, _ = demo_run
    m = metrics(root)
    val = m["sets"]["val"]
    print(f"demo val, pycocotools: AP50 {val['coco']['AP50']:.4f}, AP50-95 {val['coco']['AP']:.4f}; "
          f"MR-2 {', '.join(f'{k} {100 * v:.2f} %' for k, v in val['miss_rate'].items())}; "
          f"ultralytics mAP50 {m['ultralytics_val']['mAP50']:.4f}")
    assert val["images"] == 60 and val["detections"] > 0
    assert val["coco"]["AP50"] >= AP50_BAR
    assert set(val["miss_rate"]) == {"Reasonable", "Reasonable_small", "Reasonable_occ=heavy", "All"}
    assert m["latency_ms_per_image"]["p95"] >= m["latency_ms_per_image"]["p50"] > 0
    assert m["model_bytes"] == (root / "artifacts/demo/weights/best.pt").stat().st_size
    assert m["settings"]["conf"] == 0.001 and "note" in m["ultralytics_val"]

    # the same detections scored by a direct pycocotools run give exactly the same numbers
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval
    gt = COCO(str(root / "datasets/demo/yolo/val_coco.json"))
    dets = json.loads((root / val["detections_file"]).read_text())
    e = COCOeval(gt, gt.loadRes(dets), "bbox")
    e.evaluate(), e.accumulate(), e.summarize()
    assert [val["coco"][k] for k in scoring.COCO_STATS] == [float(x) for x in e.stats]

    summary = (root / "artifacts/demo/metrics/summary.md").read_text()
    assert "| pt | val | 60 |" in summary and "MR-2 Reasonable" in summary


def test_up_to_date_metrics_are_not_recomputed(demo_run):
    root, _ = demo_run
    before = metrics(root)["finished"]
    proc = run_module("evaluate", ["--config", DEMO], root)
    assert proc.returncode == 0 and "is up to date" in proc.stdout
    assert metrics(root)["finished"] == before


# ------------------------------------------------------------------------------ bad input
def test_scoring_bad_input():
    gt = {"images": [{"id": 1}, {"id": 2}], "categories": [{"id": 1, "name": "pedestrian"}],
          "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [10, 10, 30, 80], "height": 80,
                           "vis_ratio": 1.0, "ignore": 0, "iscrowd": 0, "area": 2400}]}
    with pytest.raises(ValueError, match=r"not in the ground truth, e.g. \[7, 9\]"):
        scoring.check_ids(gt, [{"image_id": 7, "category_id": 1}, {"image_id": 9, "category_id": 1}])
    with pytest.raises(ValueError, match=r"category id\(s\) \[3\]"):
        scoring.check_ids(gt, [{"image_id": 1, "category_id": 3}])
    empty = scoring.miss_rates(gt, [])  # 100 % missed where there is something to miss
    assert empty["Reasonable"]["MR"] == empty["All"]["MR"] == 1.0


def finds_nothing_onnx(path: Path, size=(256, 256)) -> Path:
    """A real ONNX model with the standard head's output (1, 5, anchors) for an input of `size`: per
    stride an average pool and a 1x1 convolution to (cx, cy, w, h, score logit), the score a sigmoid of
    a logit near -30 whatever the frame, so below any conf: it detects nothing."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper
    h, w = size
    nodes, weights, parts = [], [], []
    for s in decode.STRIDES:
        bias = np.array([s / 2, s / 2, 2 * s, 4 * s, -30], np.float32)  # a plausible box, a hopeless score
        weights += [numpy_helper.from_array(np.full((5, 3, 1, 1), 0.01, np.float32), f"w{s}"),
                    numpy_helper.from_array(bias, f"b{s}")]
        nodes += [helper.make_node("AveragePool", ["images"], [f"pool{s}"], kernel_shape=[s, s], strides=[s, s]),
                  helper.make_node("Conv", [f"pool{s}", f"w{s}", f"b{s}"], [f"head{s}"]),
                  helper.make_node("Reshape", [f"head{s}", "flat"], [f"part{s}"])]
        parts.append(f"part{s}")
    weights.append(numpy_helper.from_array(np.array([1, 5, -1], np.int64), "flat"))
    nodes += [helper.make_node("Concat", parts, ["raw"], axis=2),
              helper.make_node("Split", ["raw", "split"], ["boxes", "logits"], axis=1),
              helper.make_node("Sigmoid", ["logits"], ["scores"]),
              helper.make_node("Concat", ["boxes", "scores"], ["output0"], axis=1)]
    weights.append(numpy_helper.from_array(np.array([4, 1], np.int64), "split"))
    anchors = sum((h // s) * (w // s) for s in decode.STRIDES)
    graph = helper.make_graph(nodes, "finds-nothing", [helper.make_tensor_value_info("images", TensorProto.FLOAT,
                                                                                    [1, 3, h, w])],
                              [helper.make_tensor_value_info("output0", TensorProto.FLOAT, [1, 5, anchors])], weights)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], ir_version=8)
    onnx.checker.check_model(model, full_check=True)
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path))
    return path


def test_empty_detection_set_gives_zero_ap_and_a_warning(tmp_path, demo_raw):
    """The stage's evaluation of a model that finds nothing on the demo val split, a real ONNX model
    run through the normal ONNX backend: the warning the user sees on stderr, and AP 0 and MR-2 100 %
    in the metrics file."""
    from services.common import config
    from services.dataset import citypersons
    root = demo_root(tmp_path, demo_raw)
    cfg = config.load(DEMO, ["evaluate.sets=[val]"])
    citypersons.convert(cfg, root=root)
    weights = finds_nothing_onnx(root / "artifacts/demo/models/demo.onnx")  # where the export stage writes it
    proc = run_module("evaluate", ["--config", DEMO, "evaluate.sets=[val]", "evaluate.format=onnx"], root)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    err = proc.stderr
    assert "evaluate: warning: onnx on val: no detections at all; AP is 0 and the miss rate 100 %" in err, err
    result = json.loads((root / "artifacts/demo/metrics/onnx.json").read_text())
    assert result["device"].startswith("onnxruntime CPU") and result["weights"] == "artifacts/demo/models/demo.onnx"
    assert result["model_bytes"] == weights.stat().st_size
    val = result["sets"]["val"]
    assert val["images"] == 60 and val["detections"] == 0
    assert all(val["coco"][k] == 0.0 for k in scoring.COCO_STATS)
    assert val["miss_rate"] == {"Reasonable": 1.0, "Reasonable_small": 1.0, "Reasonable_occ=heavy": 1.0, "All": 1.0}
    assert json.loads((root / val["detections_file"]).read_text()) == []


def test_stage_bad_input(demo_dataset, tmp_path):
    root = copy_dataset(demo_dataset, tmp_path)
    line = one_error(run_module("evaluate", ["--config", DEMO], root), "evaluate")
    assert "run `make fit` first" in line
    (root / "artifacts/demo/weights").mkdir(parents=True)
    (root / "artifacts/demo/weights/model.onnx").write_bytes(b"junk")
    line = one_error(run_module("evaluate", ["--config", DEMO, "evaluate.format=pt",
                                             "evaluate.weights=artifacts/demo/weights/model.onnx"], root), "evaluate")
    assert "evaluate.format=pt but" in line and "not a .pt file" in line
    line = one_error(run_module("evaluate", ["--config", DEMO, "evaluate.format=onnx",
                                             "evaluate.weights=artifacts/demo/weights/model.onnx"], root), "evaluate")
    assert "artifacts/demo/weights/model.onnx (an ONNX model) cannot be read" in line
    assert "set evaluate.weights to a readable .onnx model" in line  # the user's file: no stage rebuilds it
    empty = tmp_path / "empty"
    line = one_error(run_module("evaluate", ["--config", DEMO, "evaluate.format=pt"], empty), "evaluate")
    assert "run `make dataset` first" in line
