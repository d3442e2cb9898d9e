"""docs/development.md ("Moving aside") and docs/thesis/index.md ("Nothing lost"): an output built from
other inputs or settings is moved aside (`<name>.old-<UTC time>`), never deleted, with a line naming
what differed. The dataset stage does it (tests/test_dataset_bad_input.py); here the export and the
evaluation of the shared demo run, built again with another setting each."""
import json
import shutil

from tests.helpers import ROOT, copy_dataset, run_module

DEMO = str(ROOT / "configs" / "demo.yaml")


def test_outputs_built_from_other_settings_are_moved_aside_naming_the_key(demo_snapshot, tmp_path):
    root = copy_dataset(demo_snapshot, tmp_path / "root")
    shutil.copytree(demo_snapshot / "artifacts" / "demo", root / "artifacts" / "demo")
    models, metrics = root / "artifacts/demo/models", root / "artifacts/demo/metrics"
    old_onnx, old_pt = (models / "demo.onnx").read_bytes(), json.loads((metrics / "pt.json").read_text())
    found = []

    export = run_module("export", ["--config", DEMO, "export.opset=13"], root)
    assert export.returncode == 0, export.stderr[-2000:]
    aside = list(models.glob("demo.onnx.old-*"))
    if not (len(aside) == 1 and aside[0].read_bytes() == old_onnx and "export.opset" in export.stdout):
        found.append(f"export: demo.onnx rebuilt with export.opset=13; moved aside: {[p.name for p in aside]}; "
                     f"a line naming export.opset: {'export.opset' in export.stdout}")

    evaluate = run_module("evaluate", ["--config", DEMO, "evaluate.format=pt", "evaluate.conf=0.01"], root)
    assert evaluate.returncode == 0, evaluate.stderr[-2000:]
    assert json.loads((metrics / "pt.json").read_text())["settings"]["conf"] == 0.01
    aside = list(metrics.glob("pt.json.old-*"))
    if not (len(aside) == 1 and json.loads(aside[0].read_text()) == old_pt and "evaluate.conf" in evaluate.stdout):
        found.append(f"evaluate: metrics/pt.json rewritten with evaluate.conf=0.01; moved aside: "
                     f"{[p.name for p in aside]}; a line naming evaluate.conf: {'evaluate.conf' in evaluate.stdout}")
    assert not found, found
