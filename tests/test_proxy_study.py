"""The thesis study end to end, small: `make sweep SWEEP=proxy-study` (two trials of it, TRIALS=) on
local Ray, each the whole chain down to the INT8 model in the simulator, on the CityPersons-scale
proxy drawn from the real annotation files; the board runtime (`detect.py --backend onnx`, its real
code path on this machine's CPU) measures the first trial's bundle, and `make report SWEEP=proxy-study`
shows that measurement beside the model's accuracy, labelled as x86, never as the board."""
import json

import pytest

from tests.helpers import SHARED_CITYPERSONS, failure, make, needs_real_citypersons
from tests.test_report import md_rows
from tests.test_report_board import X86, measure
from services.common.layout import Experiment

SWEEP, VARIANT = "proxy-study", "yolo11n-640"
TRIALS = [f"{VARIANT}-s0", f"{VARIANT}-s1"]
# smaller still than the file's CPU scale: what is checked here is the study's path, not its numbers
SMALL = [f"dataset.proxy_annotations={SHARED_CITYPERSONS}", "dataset.proxy_train_images=8",
         "dataset.proxy_val_images=4", "dataset.calib_images=4", "train.epochs=1",
         "convert.analysis_images=1", "train.plots=false"]


@pytest.mark.slow
@needs_real_citypersons
def test_the_proxy_study_runs_as_a_sweep_and_its_report_shows_the_board_measurement(tmp_path):
    root = tmp_path / "root"
    root.mkdir()
    sweep = make("sweep", f"SWEEP={SWEEP}", f"TRIALS={','.join(TRIALS)}", f"ARGS={' '.join(SMALL)}", root=root,
                 timeout=2400)
    assert sweep.returncode == 0, failure(sweep)
    record = json.loads((root / "artifacts" / SWEEP / "sweep.json").read_text())
    assert [(t["trial"], t["status"]) for t in record["trials"]] == [(t, "done") for t in TRIALS]
    first = Experiment(f"{SWEEP}-{TRIALS[0]}", root)
    for trial in TRIALS:
        exp = Experiment(f"{SWEEP}-{trial}", root)
        assert {p.stem for p in exp.metrics.glob("*.json")} >= {"pt", "onnx", "onnx-rknn-head", "rknn"}, trial
        assert json.loads(exp.metrics_of("rknn").read_text())["settings"]["imgsz_hw"] == [640, 640]

    # the board runtime on this PC: the bundle's detect.py on the proxy's val frames, its report copied back
    images = root / "datasets" / SWEEP / "yolo" / "val" / "images"
    board = measure(first.board, images, first.board_reports / "cores-0.json", "0")
    assert board["frames"] == len(list(images.iterdir())) == 4
    assert board["model_sha256"] == json.loads(first.bundle_manifest.read_text())["files"][board["model"]]

    report = make("report", f"SWEEP={SWEEP}", root=root, timeout=900)
    assert report.returncode == 0, failure(report)
    md = (root / "artifacts" / SWEEP / "report" / "report.md").read_text()
    shown = {(r["variant"], r["format"]): r for r in md_rows(md, "Metrics on val")}
    assert set(shown) == {(VARIANT, f) for f in ("pt", "onnx", "onnx-rknn-head", "rknn")}
    assert all(r["n"] == "2" for r in shown.values())  # both seeds, averaged
    (row,) = md_rows(md, "Board measurements")
    ap50 = json.loads(first.metrics_of("onnx-rknn-head").read_text())["sets"]["val"]["coco"]["AP50"]
    assert row["variant"] == VARIANT and row["format"] == "onnx-rknn-head" and row["measured on"] == X86
    assert row["frames"] == "4" and row["cores"] == "0" and row["AP50"] == f"{ap50:.3f}"
    assert row["NPU ms"] == f"{board['latency_ms']['npu']['mean']:.1f}"
    assert "board" not in row["measured on"]
