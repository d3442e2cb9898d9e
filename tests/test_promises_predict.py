"""make predict's reruns and the toolkit's log (docs/thesis/predict.md), on a copy of the shared demo
run: the same source, model and settings again replace the folder; a file of yours in it, or another
threshold, move the previous folder aside to predict/<format>.old-<UTC time>; FORMAT=rknn sends
rknn-toolkit2's messages to predict/rknn-toolkit.log, not the terminal."""
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers import CONVERT_PY, ROOT, copy_dataset, needs_convert_env, stage_env

DEMO = str(ROOT / "configs" / "demo.yaml")
MOVED = ("predict: the earlier predictions (another source, model or setting, or files of yours beside them) "
         "moved to artifacts/demo/predict/")


@pytest.fixture(scope="module")
def project(demo_snapshot, tmp_path_factory) -> tuple[Path, Path]:
    """A copy of the demo run (dataset as hard links, artifacts copied) and a folder of 3 val images."""
    root = copy_dataset(demo_snapshot, tmp_path_factory.mktemp("predict-again"))
    shutil.copytree(demo_snapshot / "artifacts" / "demo", root / "artifacts" / "demo")
    source = root / "street"
    source.mkdir()
    for p in sorted((root / "datasets/demo/yolo/val/images").glob("*.png"))[:3]:
        shutil.copy(p, source / p.name)
    return root, source


def predict(root: Path, *args, fmt: str = "pt") -> subprocess.CompletedProcess:
    python = str(CONVERT_PY) if fmt == "rknn" else sys.executable
    proc = subprocess.run([python, "-m", "services.predict", "--config", DEMO, "--format", fmt, *map(str, args)],
                          cwd=ROOT, env=stage_env(root), capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    return proc


def asides(root: Path, fmt: str = "pt") -> list[Path]:
    return sorted((root / "artifacts/demo/predict").glob(f"{fmt}.old-*"))


def test_the_same_run_replaces_the_folder_and_anything_else_moves_it_aside(project):
    root, source = project
    out = root / "artifacts/demo/predict/pt"
    predict(root, "--source", source)
    first = (out / "detections.json").stat()

    same = predict(root, "--source", source)
    assert MOVED not in same.stdout and not asides(root)
    assert (out / "detections.json").stat().st_ino != first.st_ino  # written anew, in place of the old
    assert sorted(p.name for p in out.iterdir()) == sorted([p.name for p in source.iterdir()] + ["detections.json"])

    (out / "my notes.txt").write_text("the third one is a false positive\n")  # a file of yours
    yours = predict(root, "--source", source)
    (aside,) = asides(root)
    assert f"{MOVED}{aside.name}" in yours.stdout, yours.stdout
    assert (aside / "my notes.txt").read_text() == "the third one is a false positive\n"
    assert (aside / "detections.json").is_file() and not (out / "my notes.txt").exists()

    threshold = predict(root, "--source", source, "--conf", "0.5")
    moved = asides(root)
    assert len(moved) == 2
    (newer,) = [p for p in moved if p != aside]
    assert f"{MOVED}{newer.name}" in threshold.stdout
    assert json.loads((newer / "detections.json").read_text())["settings"]["conf"] == 0.25
    assert json.loads((out / "detections.json").read_text())["settings"]["conf"] == 0.5


@needs_convert_env
def test_rknn_sends_the_toolkits_messages_to_its_log(project):
    root, source = project
    proc = predict(root, "--source", source, fmt="rknn")
    log = root / "artifacts/demo/predict/rknn-toolkit.log"
    assert "rknn-toolkit2's messages go to artifacts/demo/predict/rknn-toolkit.log" in proc.stdout
    lines = [line for line in log.read_text(errors="replace").replace("\r", "\n").splitlines() if line.strip()]
    assert len(lines) > 50 and any("rknn-toolkit2 version" in line for line in lines), lines[:20]
    terminal = [line for line in (proc.stdout + proc.stderr).replace("\r", "\n").splitlines() if line.strip()]
    assert len(terminal) < 40, terminal  # the toolkit's hundreds of lines are in the log alone
    assert not any("rknn-toolkit2 version" in line for line in terminal)
    assert (root / "artifacts/demo/predict/rknn/detections.json").is_file()
