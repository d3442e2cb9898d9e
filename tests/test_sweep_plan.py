"""The thesis study as sweeps (configs/sweeps/thesis.yaml, proxy-study.yaml) and `make sweep PLAN=1`:
every trial through the sweep's own checks, the plan's table and estimate, and that a plan starts
nothing (no Ray, no file)."""
import os
import re
from pathlib import Path

import pytest

from tests.helpers import ROOT, make, needs_make_venv, one_error
from services.run import runner
from services.sweep import plan, sweep

STUDY = {"yolo11n-640": ("yolo11n", 640, 640, "dfl"), "yolo11n-640x1280": ("yolo11n", 1280, [640, 1280], "dfl"),
         "yolo26n-640": ("yolo26n", 640, 640, "one2one"), "yolo26n-640x1280": ("yolo26n", 1280, [640, 1280], "one2one")}


@pytest.mark.parametrize("name, base, seeds, dataset, suffix, device", [
    ("thesis", "citypersons", [0, 1, 2], "citypersons", ".pt", "0"),
    ("proxy-study", "proxy", [0, 1], "proxy-study", ".yaml", "cpu"),
])
def test_every_trial_of_the_study_passes_the_sweeps_checks(name, base, seeds, dataset, suffix, device):
    """sweep.load validates every trial's configuration and that trials sharing a dataset build it
    alike; here: the variants the study asks for, one dataset, the whole chain down to INT8."""
    s = sweep.load(ROOT / "configs" / "sweeps" / f"{name}.yaml")
    assert s["base"] == base and s["seeds"] == seeds and s["stages"] == runner.CHAIN
    assert len(s["trials"]) == 4 * len(seeds) and sorted(s["variants"]) == sorted(STUDY)
    assert {t["cfg"]["dataset"]["name"] for t in s["trials"]} == {dataset}  # one dataset build
    for t in s["trials"]:
        family, imgsz, deployed, head = STUDY[t["variant"]]
        cfg = t["cfg"]
        assert cfg["train"]["model"] == f"{family}{suffix}"  # proxy-study: from scratch, nothing to download
        assert (cfg["train"]["imgsz"], cfg["export"]["imgsz"], cfg["export"]["rknn_head"]) == (imgsz, deployed, head)
        assert cfg["convert"]["dtype"] == "int8" and cfg["train"]["seed"] == t["seed"]
        assert str(cfg["train"]["device"]) == device and t["experiment"] == f"{name}-{t['variant']}-s{t['seed']}"


def test_the_plans_estimate_comes_from_the_gpu_record_scaled_by_pixels():
    gpu = plan.gpu_speed()
    assert gpu["images_per_s"] == 199.2 and gpu["imgsz"] == 1280 and "NVIDIA H200" in gpu["source"]
    s = sweep.load(ROOT / "configs" / "sweeps" / "thesis.yaml")
    rows = {r["trial"]: r for r in (plan.trial_row(t, gpu, Path("/nonexistent")) for t in s["trials"])}
    big, small = rows["yolo11n-640x1280-s0"], rows["yolo11n-640-s0"]
    assert big["rate"] == "199 measured" and small["rate"] == "797 scaled"
    assert small["seconds"] == pytest.approx(big["seconds"] / 4)
    assert big["seconds"] == pytest.approx(50 * round(2975 * 0.9) / 199.2) and big["images"] == "~2678"
    cpu = plan.trial_row(sweep.load(ROOT / "configs/sweeps/proxy-study.yaml")["trials"][2], gpu, Path("/x"))
    assert cpu["device"] == "cpu" and cpu["rate"] == "0.47 estimate"


def _files(folder: Path) -> set:
    """Every file and folder under `folder` but the environments, git's and the caches (not walked at all:
    .venv/ alone holds tens of thousands of files)."""
    skip = {".git", ".venv", "__pycache__", ".pytest_cache", ".ruff_cache"}
    found = set()
    for here, folders, names in os.walk(folder):
        folders[:] = [f for f in folders if f not in skip]
        found |= {Path(here) / n for n in [*folders, *names] if n not in skip}
    return found


@needs_make_venv
def test_make_sweep_plan_lists_twelve_trials_and_starts_nothing(tmp_path):
    """No Ray (a stand-in `ray` package records any import), no stage, no new file in the project or
    the outputs' root."""
    fake = tmp_path / "fake-ray"
    (fake / "ray").mkdir(parents=True)
    (fake / "ray" / "__init__.py").write_text(
        f"open({str(tmp_path / 'ray-imported')!r}, 'w').close()\nraise ImportError('PLAN=1 must not import ray')\n")
    root = tmp_path / "root"
    root.mkdir()
    before = _files(ROOT)
    proc = make("sweep", "SWEEP=thesis", "PLAN=1", root=root, timeout=300,
                env={"PYTHONPATH": os.pathsep.join([str(fake), os.environ.get("PYTHONPATH", "")])})
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    trials = re.findall(r"^  (yolo(?:11|26)n-640(?:x1280)?-s[012]) ", proc.stdout, re.M)
    assert len(trials) == 12 == len(set(trials)), proc.stdout
    assert "12 trials = 4 variants x 3 seeds" in proc.stdout and "dataset -> fit -> export -> evaluate -> convert" \
        in proc.stdout and "datasets/citypersons/yolo/ (to build)" in proc.stdout
    assert "measured on an NVIDIA H200" in proc.stdout and "scaled by pixels" in proc.stdout
    assert "runner:" not in proc.stdout  # no runner chosen, so no engine probed
    assert not (tmp_path / "ray-imported").exists() and not any(root.iterdir())
    assert _files(ROOT) == before


@needs_make_venv
def test_make_sweep_plan_of_an_unknown_sweep_is_one_line(tmp_path):
    proc = make("sweep", "SWEEP=no-such-sweep", "PLAN=1", root=tmp_path, timeout=300)
    assert one_error(proc).startswith("sweep: error: sweep file configs/sweeps/no-such-sweep.yaml not found; use "
                                      "configs/sweeps/<name>.yaml (SWEEP=<name>), known: demo-sweep, proxy-study, "
                                      "thesis"), proc.stderr
    assert not any(tmp_path.iterdir())


@needs_make_venv
def test_trials_narrows_the_sweep_and_an_unknown_trial_is_one_line(tmp_path):
    proc = make("sweep", "SWEEP=thesis", "PLAN=1", "TRIALS=yolo26n-640-s2,yolo11n-640-s0", root=tmp_path, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    trials = re.findall(r"^  (yolo(?:11|26)n-640(?:x1280)?-s[012]) ", proc.stdout, re.M)
    assert trials == ["yolo11n-640-s0", "yolo26n-640-s2"], proc.stdout  # in the file's order
    assert "2 trials of 12 (TRIALS=) = 4 variants x 3 seeds" in proc.stdout
    line = one_error(make("sweep", "SWEEP=thesis", "PLAN=1", "TRIALS=yolo11n-640-s0,yolo11n-s9", root=tmp_path,
                          timeout=300), who="sweep")
    assert line.startswith("sweep: error: TRIALS: yolo11n-s9 is not a trial of configs/sweeps/thesis.yaml; its "
                           "trials are yolo11n-640-s0, yolo11n-640-s1"), line
    assert not any(tmp_path.iterdir())
