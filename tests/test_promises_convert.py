"""The convert stage's skip rule (docs/development.md: its manifest holds a fingerprint of the ONNX, the
calibration images, the val ground truth, the `convert` and `evaluate` settings and the toolkit
version): on a copy of the shared demo run, it is up to date and touches nothing; FORCE=1 rebuilds it,
its toolkit's output in a log, `board/` replaced (or moved aside when it holds a file the stage did not
write); a changed calibration image, a changed val ground truth and a changed evaluate setting each
rebuild the .rknn and its evaluation; unchanged again, it is up to date again."""
import json
import os
import shutil
import subprocess
from pathlib import Path

import cv2
import pytest

from tests.helpers import CONVERT_PY, ROOT, copy_dataset, needs_convert_env, stage_env
from tests.test_faults import aside, temps, tree
from services.common import decode

pytestmark = needs_convert_env

DEMO = str(ROOT / "configs" / "demo.yaml")
MODEL = "artifacts/demo/models/demo_int8_rk3588.rknn"
UP_TO_DATE = f"convert: {MODEL} is up to date (inputs, settings and toolkit unchanged); FORCE=1 rebuilds it"
BUILDING = f"convert: building {MODEL}; rknn-toolkit2's own messages go to artifacts/demo/rknn/toolkit.log"


def convert(root: Path, *args) -> subprocess.CompletedProcess:
    proc = subprocess.run([str(CONVERT_PY), "-m", "services.convert", "--config", DEMO, *args], cwd=ROOT,
                          env=stage_env(root), capture_output=True, text=True, timeout=1200)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    return proc


def manifest(root: Path) -> dict:
    return json.loads((root / "artifacts/demo/models/demo_int8_rk3588.manifest.json").read_text())


def replace_file(path: Path, data: bytes) -> None:
    """New bytes under the name, never written through a hard link (the dataset's files are links
    into the shared demo run's)."""
    path.unlink()
    path.write_bytes(data)


def rebuilt(root: Path, before: dict, *args) -> dict:
    """Convert once more: it must rebuild (the .rknn, its manifest and its metrics written anew);
    then, nothing changed since, it is up to date. Returns the new manifest, with the rebuild's
    output under "stdout"."""
    rknn_json = root / "artifacts/demo/metrics/rknn.json"
    old_metrics = rknn_json.stat().st_mtime_ns
    proc = convert(root, *args)
    assert BUILDING in proc.stdout.splitlines() and UP_TO_DATE not in proc.stdout, proc.stdout[-2000:]
    after = manifest(root)
    assert after["finished"] >= before["finished"] and after["fingerprint"] != before["fingerprint"]
    assert rknn_json.stat().st_mtime_ns != old_metrics
    assert after["outputs"][MODEL]["mtime_ns"] != before["outputs"][MODEL]["mtime_ns"]
    again = convert(root, *args)
    assert UP_TO_DATE in again.stdout.splitlines(), again.stdout[-2000:]
    return {**after, "stdout": proc.stdout}


@pytest.fixture(scope="module")
def converted(demo_snapshot, tmp_path_factory) -> Path:
    """A copy of the demo run (its dataset as hard links, its artifacts copied: the stage writes its
    log in place) on which convert is up to date."""
    root = copy_dataset(demo_snapshot, tmp_path_factory.mktemp("convert-again"))
    shutil.copytree(demo_snapshot / "artifacts" / "demo", root / "artifacts" / "demo")
    before = tree(root / "artifacts" / "demo")
    proc = convert(root)
    assert UP_TO_DATE in proc.stdout.splitlines(), proc.stdout[-2000:]
    assert tree(root / "artifacts" / "demo") == before  # up to date: not a file written
    return root


def test_force_rebuilds_with_the_toolkits_output_in_its_log_and_replaces_its_own_board(converted):
    root, art = converted, converted / "artifacts" / "demo"
    before = tree(art)
    forced = convert(root, "--force")
    lines = [line for line in (forced.stdout + forced.stderr).split("\n") if line.strip()]
    assert len(lines) < 60, f"{len(lines)} lines: the toolkit's progress belongs in its log"
    log = art / "rknn" / "toolkit.log"
    assert log.is_file() and log.stat().st_size > 0 and "toolkit.log" in forced.stdout
    assert (root / MODEL).stat().st_mtime_ns != before["models/demo_int8_rk3588.rknn"][1]
    assert not aside(art) and not temps(root)  # board/ was the stage's own: replaced, not piled up
    bundle = json.loads((art / "board" / "bundle.json").read_text())
    written = {str(p.relative_to(art / "board")) for p in (art / "board").rglob("*") if p.is_file()}
    assert set(bundle["files"]) == written - {"bundle.json"} and "runtime/yolo_core.py" in written


def test_a_changed_calibration_image_rebuilds_the_model(converted):
    root, before = converted, manifest(converted)
    first = root / (root / "datasets/demo/yolo/calib.txt").read_text().splitlines()[0]
    image = cv2.imread(str(first))
    image[:40, :40] = (0, 0, 255)  # a red corner: another picture under the same name
    replace_file(first, cv2.imencode(".png", image)[1].tobytes())
    after = rebuilt(root, before)
    changed = {k for k in after["fingerprint"] if after["fingerprint"][k] != before["fingerprint"][k]}
    assert changed == {"calibration_sha256"}


def test_the_rebuilt_model_is_calibrated_on_the_changed_image(converted):
    """After the rebuild above: the picture the quantizer read for that image (its letterboxed copy,
    listed in the toolkit's calibration list) is the changed image, letterboxed."""
    root = converted
    first = root / (root / "datasets/demo/yolo/calib.txt").read_text().splitlines()[0]
    listing = [Path(p) for p in (root / "artifacts/demo/rknn/calib-256x256.txt").read_text().splitlines()]
    copy_of = {p.name.split(".")[0]: p for p in listing}  # <stem>.<sha256[:12]>.png
    second = root / (root / "datasets/demo/yolo/calib.txt").read_text().splitlines()[1]
    for image in (second, first):  # an unchanged image's copy (the check itself holds), then the changed one's
        expected = decode.letterbox(cv2.imread(str(image)), (256, 256))[0]
        assert (cv2.imread(str(copy_of[image.stem])) == expected).all(), image.name


def test_a_changed_val_ground_truth_rebuilds_the_model(converted):
    root, before = converted, manifest(converted)
    gt = root / "datasets/demo/yolo/val_gt.json"
    replace_file(gt, json.dumps(json.loads(gt.read_text()), indent=1).encode())  # other bytes, same truth
    after = rebuilt(root, before)
    changed = {k for k in after["fingerprint"] if after["fingerprint"][k] != before["fingerprint"][k]}
    assert changed == {"val_gt_sha256"}


def test_a_changed_evaluate_setting_rebuilds_the_model_and_its_evaluation(converted):
    root, before = converted, manifest(converted)
    after = rebuilt(root, before, "evaluate.conf=0.002")
    changed = {k for k in after["fingerprint"] if after["fingerprint"][k] != before["fingerprint"][k]}
    assert changed == {"evaluate"} and after["fingerprint"]["evaluate"]["conf"] == 0.002
    metrics = json.loads((root / "artifacts/demo/metrics/rknn.json").read_text())
    assert metrics["settings"]["conf"] == 0.002
    assert os.path.getmtime(root / "artifacts/demo/board/bundle.json") >= os.path.getmtime(root / MODEL)


def test_keep_analysis_dumps_keeps_the_toolkits_per_layer_dumps(converted):
    """docs/thesis/convert.md: the accuracy analysis's per-layer dumps are deleted unless
    keep_analysis_dumps: true (a convert setting: the model is rebuilt)."""
    root, before = converted, manifest(converted)
    dumps = root / "artifacts/demo/metrics/rknn-analysis"
    assert not dumps.exists()
    art = root / "artifacts/demo"
    (art / "board" / "my_results.txt").write_text("measured on the board\n")  # something the stage did not write
    after = rebuilt(root, before, "evaluate.conf=0.002", "convert.keep_analysis_dumps=true")
    assert "held files the convert stage did not write; moved it aside" in after["stdout"]
    (kept,) = [p for p in art.iterdir() if p.name.startswith("board.old-")]
    assert (kept / "my_results.txt").read_text() == "measured on the board\n"
    assert not (art / "board" / "my_results.txt").exists()
    assert after["fingerprint"]["convert"]["keep_analysis_dumps"] is True
    quant = json.loads((root / "artifacts/demo/metrics/quantization.json").read_text())
    assert quant["dumps"] == str(dumps) and any(p.is_file() for p in dumps.rglob("*"))
