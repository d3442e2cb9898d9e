"""Export (ONNX) and RKNN conversion on the demo run: parity, quantization sanity, the board bundle."""
import importlib
import importlib.util
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tests.helpers import (CONVERT_PY, ROOT, copy_dataset, needs_convert_env, one_error, stage_env)

DEMO = str(ROOT / "configs" / "demo.yaml")


def metrics(root: Path, fmt: str) -> dict:
    return json.loads((root / "artifacts" / "demo" / "metrics" / f"{fmt}.json").read_text())


def ap50(root, fmt):
    return metrics(root, fmt)["sets"]["val"]["coco"]["AP50"]


def bundle_runtime(board: Path):
    """The bundle's own copy of the board runtime (board/runtime/, with its copy of decode.py), not the
    repository's services.board: imported under a name of its own, as another test may import
    another bundle's."""
    name = f"bundle_runtime_{abs(hash(str(board)))}"
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, board / "runtime/__init__.py",
                                                  submodule_search_locations=[str(board / "runtime")])
    package = importlib.util.module_from_spec(spec)
    sys.modules[name] = package
    spec.loader.exec_module(package)
    for module in ("bundle", "errors", "pipeline", "yolo_core"):
        importlib.import_module(f"{name}.{module}")
    return package


def test_export_writes_both_heads_with_parity(demo_run):
    root, _ = demo_run
    models = root / "artifacts" / "demo" / "models"
    import onnx
    rknn_outputs = ["box_s8", "score_s8", "box_s16", "score_s16", "box_s32", "score_s32"]  # the dfl layout
    for name, outputs in (("demo.onnx", ["output0"]), ("demo.rknn-head.onnx", rknn_outputs)):
        m = onnx.load(str(models / name))
        assert [o.name for o in m.graph.output] == outputs
        assert max(o.version for o in m.opset_import if o.domain in ("", "ai.onnx")) == 12
        dims = [d.dim_value for d in m.graph.input[0].type.tensor_type.shape.dim]
        assert dims == [1, 3, 256, 256]  # static, batch 1
    parity = json.loads((root / "artifacts/demo/metrics/export.json").read_text())["parity_vs_pt"]
    assert set(parity) == {"onnx", "onnx-rknn-head"} and all(p["images"] == 8 for p in parity.values()), parity
    for head in ("onnx", "onnx-rknn-head"):
        assert parity[head]["max_abs_diff"] < 0.05 and parity[head]["top_detections_agree"] is True
    print(f"demo AP50: pt {ap50(root, 'pt'):.4f}, onnx {ap50(root, 'onnx'):.4f}, "
          f"onnx-rknn-head {ap50(root, 'onnx-rknn-head'):.4f}, rknn {ap50(root, 'rknn'):.4f}")
    assert abs(ap50(root, "pt") - ap50(root, "onnx")) <= 0.005
    # the RKNN head decodes (softmax, expectation, anchors) to the very detections of the standard head
    assert abs(ap50(root, "onnx-rknn-head") - ap50(root, "onnx")) <= 0.002


def test_int8_rknn_keeps_its_accuracy(demo_run):
    root, _ = demo_run
    rknn_file = root / "artifacts/demo/models/demo_int8_rk3588.rknn"
    assert rknn_file.stat().st_size > 1_000_000
    quant = json.loads((root / "artifacts/demo/metrics/quantization.json").read_text())
    assert quant["all_scores_zero"] is False and quant["max_score_on_val"] > 0.5
    assert set(quant["outputs"]) == {"box_s8", "score_s8", "box_s16", "score_s16", "box_s32", "score_s32"}
    assert not list((root / "artifacts/demo/metrics").glob("rknn-analysis*"))  # dumps deleted by default
    # A safety bound, looser than the benchmark's bars (benchmarks/int8_fidelity.py: AP50 ratio >= 0.99,
    # MR-2 gap <= 1 pt), so that a correct change is not blocked by one seed's noise.
    assert ap50(root, "rknn") >= 0.97 * ap50(root, "onnx-rknn-head")
    mr = {fmt: metrics(root, fmt)["sets"]["val"]["miss_rate"]["Reasonable"] for fmt in ("rknn", "onnx-rknn-head")}
    assert 100 * (mr["rknn"] - mr["onnx-rknn-head"]) <= 3.0, mr
    manifest = json.loads((root / "artifacts/demo/models/demo_int8_rk3588.manifest.json").read_text())
    assert manifest["layout"] == "dfl" and manifest["settings"]["hybrid"] == "scores"
    summary = (root / "artifacts/demo/metrics/summary.md").read_text()
    for fmt in ("pt", "onnx", "onnx-rknn-head", "rknn"):
        assert f"| {fmt} | val |" in summary


def test_board_bundle_decodes_like_the_simulator_evaluation(demo_run):
    root, _ = demo_run
    board = root / "artifacts/demo/board"
    for name in ("demo_int8_rk3588.rknn", "labels.txt", "detect.py", "runtime/yolo_core.py", "bundle.json",
                 "README.md"):
        assert (board / name).is_file(), name
    bundle = json.loads((board / "bundle.json").read_text())
    assert bundle["toolkit_version"] in (board / "README.md").read_text()
    runtime = bundle_runtime(board)  # rknnlite is imported only when it runs on a board
    loaded = runtime.bundle.load_bundle(board)
    sim = np.load(root / "artifacts/demo/rknn/simulator_outputs.npz")
    evaluated = json.loads((root / metrics(root, "rknn")["sets"]["val"]["detections_file"]).read_text())
    gt = json.loads((root / "datasets/demo/yolo/val_gt.json").read_text())
    ids = {im["im_name"]: im["id"] for im in gt["images"]}
    import cv2
    assert bundle["layout"] == "dfl" and loaded.layout == "dfl"
    assert len(sim["names"]) == 2  # the convert stage keeps the simulator's outputs for 2 val images
    compared = 0
    for i, name in enumerate(sim["names"]):
        image = cv2.imread(str(root / "datasets/demo/yolo/val/images" / str(name)))
        _, meta = runtime.yolo_core.preprocess(image, loaded.size)
        outputs = [sim[f"out_{i}_{k}"] for k in range(6)]
        runtime.bundle.check_layout(loaded.layout, loaded.size, outputs)
        boxes, scores, cls = runtime.pipeline.detections(outputs, meta, loaded.layout, loaded.size, 0.001,
                                                         bundle["iou"], bundle["max_det"])
        ours = runtime.yolo_core.to_coco(ids[str(name)], boxes, scores, cls, bundle["category_ids"])
        theirs = [d for d in evaluated if d["image_id"] == ids[str(name)]]
        assert ours == theirs and ours
        compared += 1
    assert compared == 2


@needs_convert_env
def test_convert_bad_input(demo_snapshot, tmp_path):
    root = copy_dataset(demo_snapshot, tmp_path)

    def convert(*extra):
        return subprocess.run([str(CONVERT_PY), "-m", "services.convert", "--config", DEMO, *extra], cwd=ROOT,
                              env=stage_env(root), capture_output=True, text=True, timeout=600)

    assert "run `make export` first" in one_error(convert(), "convert")
    assert "rk3588" in one_error(convert("convert.platform=rk9999"), "convert")

    models = root / "artifacts/demo/models"
    models.mkdir(parents=True)
    src = demo_snapshot / "artifacts/demo/models/demo.rknn-head.onnx"
    import onnx
    m = onnx.load(str(src))
    m.graph.input[0].type.tensor_type.shape.dim[0].dim_param = "batch"
    onnx.save(m, str(models / "demo.rknn-head.onnx"))
    line = one_error(convert(), "convert")
    assert "static (1, 3, h, w)" in line and "['batch', 3, 256, 256]" in line

    (models / "demo.rknn-head.onnx").write_bytes(src.read_bytes())
    victims = [root / p for p in (root / "datasets/demo/yolo/calib.txt").read_text().split()[:2]]
    for v in victims:
        v.unlink()
    line = one_error(convert(), "convert")
    assert "2 of 100 image(s) missing or unreadable" in line and victims[0].name in line
    assert not list(models.glob("*.rknn")) and not list(models.glob(".*tmp*"))


def test_board_script_refuses_a_layout_it_does_not_know(demo_snapshot, tmp_path):
    board = tmp_path / "board"
    shutil.copytree(demo_snapshot / "artifacts/demo/board", board)
    bundle = json.loads((board / "bundle.json").read_text())
    (board / "bundle.json").write_text(json.dumps({**bundle, "layout": "yolo-end2end"}))
    proc = subprocess.run([sys.executable, str(board / "detect.py"), str(board / "labels.txt")], cwd=board,
                          capture_output=True, text=True, timeout=60)
    line = one_error(proc)
    assert "'yolo-end2end'" in line and "dfl" in line and "bundle" in line
    # the same decode refuses outputs whose shapes do not fit the bundle's layout
    runtime = bundle_runtime(demo_snapshot / "artifacts/demo/board")
    loaded = runtime.bundle.load_bundle(demo_snapshot / "artifacts/demo/board")
    outputs = [np.zeros((1, 4, 32, 32)), np.zeros((1, 1, 32, 32))] * 3
    with pytest.raises(runtime.errors.LayoutError, match="different conversions"):
        runtime.bundle.check_layout(loaded.layout, loaded.size, outputs)


@needs_convert_env
def test_settings_the_toolkit_cannot_combine_are_refused_before_any_work(demo_dataset, tmp_path):
    root = copy_dataset(demo_dataset, tmp_path)
    proc = subprocess.run([str(CONVERT_PY), "-m", "services.convert", "--config", DEMO, "convert.dtype=fp16",
                           "convert.hybrid=scores"], cwd=ROOT, env=stage_env(root), capture_output=True, text=True,
                          timeout=600)
    line = one_error(proc)
    assert "convert.hybrid=scores" in line and "convert.dtype=fp16" in line and "convert.hybrid=none" in line
    # a calibration list the toolkit cannot use: fp16 quantizes nothing, and rknn-toolkit2 would drop it silently
    proc = subprocess.run([str(CONVERT_PY), "-m", "services.convert", "--config", DEMO, "convert.dtype=fp16",
                           "convert.hybrid=none", "convert.calibration=datasets/demo/yolo/calib.txt"], cwd=ROOT,
                          env=stage_env(root), capture_output=True, text=True, timeout=600)
    line = one_error(proc)
    assert "calibration list" in line and "drop convert.calibration or use convert.dtype=int8" in line
    assert not list((root / "artifacts").rglob("*.rknn"))


def constant_onnx(path: Path, output_shape: list, size=(256, 256)) -> Path:
    """A real ONNX model (opset 12, static 1x3xHxW input) whose one output has `output_shape`: what
    ultralytics' standard head ([1, 4 + classes, anchors]) or end2end head ([1, 300, 6]) gives."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper
    value = numpy_helper.from_array(np.zeros(output_shape, np.float32), "value")
    graph = helper.make_graph([helper.make_node("Constant", [], ["output0"], value=value)], "head",
                              [helper.make_tensor_value_info("images", TensorProto.FLOAT, [1, 3, *size])],
                              [helper.make_tensor_value_info("output0", TensorProto.FLOAT, output_shape)])
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 12)]), str(path))
    return path


@needs_convert_env
@pytest.mark.parametrize("shape, expected", [
    ([1, 5, 1344], "has the standard head (one output of boxes and scores), which INT8 turns into all-zero "
                   "scores; export the RKNN head (`make export FORCE=1`)"),
    ([1, 300, 6], "has ultralytics' end2end output (top-k inside, ONNX TopK, which rknn-toolkit2 does not run); "
                  "export the RKNN head with export.rknn_head=one2one")])
def test_an_onnx_the_toolkit_cannot_quantize_is_refused_before_any_work(tmp_path, shape, expected):
    """docs/troubleshooting.md: convert refuses the standard head (INT8 would give all-zero scores)
    and the end2end head (TopK), naming the fix, before the toolkit is loaded."""
    constant_onnx(tmp_path / "artifacts/demo/models/demo.rknn-head.onnx", shape)
    proc = subprocess.run([str(CONVERT_PY), "-m", "services.convert", "--config", DEMO], cwd=ROOT,
                          env=stage_env(tmp_path), capture_output=True, text=True, timeout=600)
    assert one_error(proc, "convert") == f"convert: error: artifacts/demo/models/demo.rknn-head.onnx {expected}"
    assert sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*") if p.is_file()) == [
        "artifacts/demo/models/demo.rknn-head.onnx"]  # nothing written


def test_a_toolkit_failure_is_told_by_its_error_not_by_the_word_traceback():
    """rknn-toolkit2 sometimes raises with a whole traceback as its message: the stage's line names the
    error at its end, never "Traceback (most recent call last):"."""
    from services.common.log import UserError
    from services.common.toolkit import Toolkit

    def wrapped():
        raise RuntimeError('Traceback (most recent call last):\n  File "rknn/api.py", line 9, in build\n'
                           'ValueError: the calibration image has 4 channels\n')

    def plain():
        raise ValueError("the input shape is wrong\nmore detail")

    for fn, want in ((wrapped, "(RuntimeError: ValueError: the calibration image has 4 channels)"),
                     (plain, "(ValueError: the input shape is wrong)"), (lambda: -1, "(-1)")):
        with pytest.raises(UserError) as caught:
            Toolkit(None).call("build", fn)
        assert str(caught.value) == f"rknn-toolkit2 build failed {want}; its last log lines are above"
