"""Make is the front door: the demo chain, as a user runs it, once per test session."""
import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests import engine
from tests.helpers import NetGuard, ROOT, make, needs_make_venv, one_error, refusal
from services.run import runner

pytestmark = needs_make_venv


def test_help_lists_the_targets_and_variables():
    proc = subprocess.run(["make", "help"], cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 0
    for word in ("demo", "train", "dataset", "fit", "export", "evaluate", "convert", "setup", "test-fast",
                 "EXP=", "ARGS=", "RUNNER=", "FORCE=1", "FRESH=1", "GPU=1|0"):
        assert word in proc.stdout
    assert "$(" not in proc.stdout  # Make's variables are shown with their values


def test_demo_run_builds_the_dataset(demo_run):
    root, proc = demo_run
    # the runner is said once, with why: docker when an engine answers, else local
    runner_lines = [line for line in proc.stdout.splitlines() if line.startswith("runner: ")]
    expected = ("runner: docker (a Docker engine answered" if engine.docker_answers() else
                f"runner: local (no Docker engine answered; stages run in {runner.shown(Path(sys.prefix).parent)}/)")
    assert len(runner_lines) == 1 and runner_lines[0].startswith(expected), runner_lines
    out = root / "datasets" / "demo" / "yolo"
    m = json.loads((out / "manifest.json").read_text())
    assert m["experiment"] == "demo" and m["host"]["runner"] in ("local", "docker")
    assert m["counts"]["train"]["images"] + m["counts"]["selection"]["images"] == 240
    assert m["counts"]["val"]["images"] == 60 and m["bytes_copied"] == 0
    for name in ("demo.yaml", "val_gt.json", "val_coco.json", "calib.txt"):
        assert (out / name).is_file(), name
    assert (root / "datasets" / "demo" / "raw" / "generator.json").is_file()
    assert "person boxes" in proc.stdout  # the summary table


def test_second_run_skips_the_up_to_date_stage_and_force_reruns_it(demo_run):
    root, _ = demo_run
    again = make("demo", root=root)
    assert again.returncode == 0 and "datasets/demo/yolo is up to date" in again.stdout
    assert "runs/demo/train is finished and up to date" in again.stdout
    forced = make("dataset", "EXP=demo", "FORCE=1", root=root)
    assert forced.returncode == 0 and "up to date" not in forced.stdout
    assert "rebuilt datasets/demo/yolo from unchanged inputs and policy; the previous output was replaced" in forced.stdout
    assert not [p for p in (root / "datasets" / "demo").iterdir() if ".old-" in p.name]  # nothing piles up
    no = make("dataset", "EXP=demo", "FORCE=0", root=root)  # 0 means no
    assert no.returncode == 0 and "datasets/demo/yolo is up to date" in no.stdout


def test_bad_override_through_make_fails_with_one_line(demo_run):
    root, _ = demo_run
    proc = make("dataset", "EXP=demo", "ARGS=dataset.selection_fraction=2", root=root)
    assert "dataset.selection_fraction=2.0 is out of range" in one_error(proc, "dataset")


def test_unknown_experiment_is_named(tmp_path):
    line = one_error(make("dataset", "EXP=nope", root=tmp_path), "runner")
    assert "configs/nope.yaml not found" in line and "known experiments: citypersons, demo" in line


def test_make_dataset_offline_lists_what_to_fetch_and_touches_no_network(tmp_path):
    """`make dataset OFFLINE=1` for the real experiment on an empty project: one line per missing
    download (the .mat files, the Cityscapes zip, the COCO archives), no socket call at all."""
    guard = NetGuard(tmp_path)
    env = {**guard.env(), "CITYSCAPES_USERNAME": "", "CITYSCAPES_PASSWORD": ""}
    proc = make("dataset", "OFFLINE=1", "RUNNER=local", root=tmp_path / "root", env=env)
    lines = refusal(proc, 5, "dataset")
    assert all(line.startswith("dataset: error: missing ") for line in lines), lines
    assert sum("offline (OFFLINE=1)" in line for line in lines) == 4  # the Cityscapes line needs an account
    guard.assert_no_network("run", "dataset")  # the guard ran in the runner and in the stage: nothing tried


@pytest.mark.parametrize("args, expected", [
    (["sweep"], "runner: error: make sweep needs SWEEP=<name> (configs/sweeps/<name>.yaml); known sweeps: demo-sweep, proxy-study, thesis"),
    (["sweep", "SWEEP=nope", "RUNNER=local"],
     "sweep: error: sweep file configs/sweeps/nope.yaml not found; use configs/sweeps/<name>.yaml (SWEEP=<name>), "
     "known: demo-sweep, proxy-study, thesis"),
    (["predict", "EXP=demo"], "runner: error: make predict needs SOURCE=<image, folder or video>"),
    (["predict", "EXP=demo", "SOURCE=x.jpg", "FORMAT=tflite"],
     "runner: error: FORMAT=tflite is not a model format; use FORMAT=pt, FORMAT=onnx or FORMAT=rknn"),
    (["report", "EXP=nope"], "runner: error: config file configs/nope.yaml not found"),
])
def test_sweep_report_and_predict_name_what_they_need(tmp_path, args, expected):
    proc = make(*args, root=tmp_path)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert one_error(proc).startswith(expected), one_error(proc)
