"""Promises found walking the pages (README.md, docs/*.md, docs/thesis/*.md) that no other test checks:
every file the pages name exists; every yes/no variable refuses a word that is neither; every stage's
manifest carries the resolved config and its provenance; after `make demo` every folder holds what the
quick start lists, and the run ends with the summary table summary.md holds; offline, pretrained
weights that are not on disk are one line saying where to put them, with no network attempt."""
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers import CONVERT_PY, ROOT, demo_root, make, one_error, run_module, stage_env

DEMO = str(ROOT / "configs" / "demo.yaml")
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md")), *sorted((ROOT / "docs" / "thesis").glob("*.md"))]
# A file of the project as the pages name it: benchmarks/x.py, services/common/decode.py, configs/demo.yaml, ...
NAMED_FILE = re.compile(r"(?<![\w/.<-])((?:benchmarks|services|configs|requirements|tests|docs)/[\w./-]+\."
                        r"(?:py|yaml|yml|lock|in|txt|sh|json|md|j2))\b")


def test_every_file_the_pages_name_exists():
    named = {}
    for page in PAGES:
        for path in NAMED_FILE.findall(page.read_text()):
            named.setdefault(path, page.relative_to(ROOT))
    assert len(named) > 30, sorted(named)  # the pattern finds what the pages name
    missing = {path: str(page) for path, page in named.items() if not (ROOT / path).is_file()}
    assert not missing, missing


@pytest.mark.parametrize("target, variable", [
    ("help", "FORCE"), ("help", "FRESH"), ("help", "OFFLINE"), ("help", "GPU"), ("help", "LOCAL_WHEELS"),
    ("help", "PLAN"), ("docs", "DOCS_SERVE"),
])
def test_every_yes_no_variable_refuses_a_word_that_is_neither(tmp_path, target, variable):
    """docs/targets.md: the yes/no variables take 1/true/yes or 0/false/no; anything else is refused in
    one line, so `FRESH=0` never retrains."""
    line = one_error(make(target, f"{variable}=maybe", root=tmp_path, timeout=300), who="runner")
    assert line == (f"runner: error: {variable}=maybe is not a yes/no value; use {variable}=1 (or true/yes) or "
                    f"{variable}=0 (or false/no)"), line
    assert not list(tmp_path.iterdir())


def test_one_name_per_stage_everywhere(tmp_path):
    """docs/thesis/index.md and docs/development.md: the Make target, the module (python -m
    services.<stage>), the Compose service and the name the stage prints are dataset, fit, export,
    evaluate, convert."""
    import yaml

    from services.run import runner
    stages = ["dataset", "fit", "export", "evaluate", "convert"]
    assert runner.CHAIN == stages and list(runner.STAGES) == stages
    makefile = (ROOT / "Makefile").read_text()
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())["services"]
    for stage in stages:
        assert re.search(rf"^{stage}: ## ", makefile, re.M), stage
        assert (ROOT / "services" / stage / "__main__.py").is_file() and stage in compose, stage
        python = str(CONVERT_PY) if stage == "convert" else sys.executable
        proc = subprocess.run([python, "-m", f"services.{stage}", "--config", DEMO, "train.nosuch=1"], cwd=ROOT,
                              env=stage_env(tmp_path), capture_output=True, text=True, timeout=300)
        assert one_error(proc, who=stage).startswith(f"{stage}: error: override: unknown key train.nosuch")


def test_make_train_stops_at_the_failing_stage_and_names_it(tmp_path):
    """docs/targets.md: `make train` runs the chain, stopping at the first failure and naming the stage."""
    proc = make("train", "EXP=demo", "RUNNER=local", "ARGS=dataset.selection_fraction=2", root=tmp_path, timeout=600)
    lines = proc.stderr.splitlines()
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    assert lines[0].startswith("dataset: error: override: dataset.selection_fraction=2.0 is out of range"), lines
    assert len(lines) == 3 and lines[1] == "train: stopped at stage 'dataset' (exit 2); its messages are above"
    assert re.fullmatch(r"make(?:\[\d+\])?: \*\*\* \[[^\]]*train\] Error 2", lines[2]), lines  # [1] under make test
    assert not (tmp_path / "datasets").exists() and not (tmp_path / "runs").exists()


def test_make_rknn_is_still_the_convert_stage(tmp_path):
    """README.md: `make rknn` is the old name of `make convert`: the convert stage answers."""
    proc = make("rknn", "EXP=demo", "RUNNER=local", "ARGS=convert.dtype=fp16", root=tmp_path, timeout=600)
    line = one_error(proc, who="convert")
    assert "convert.hybrid" in line and "fp16" in line, line


# ------------------------------------------------------------------------------ after make demo
STAGE_MANIFESTS = {"dataset": "datasets/demo/yolo/manifest.json", "fit": "artifacts/demo/train/manifest.json",
                   "export": "artifacts/demo/models/manifest.json", "evaluate": "artifacts/demo/metrics/pt.json",
                   "convert": "artifacts/demo/models/demo_int8_rk3588.manifest.json"}


def test_every_stage_manifest_carries_the_resolved_config_and_its_provenance(demo_run):
    """docs/thesis/index.md (Reproducibility): every stage output carries a manifest with the resolved
    config, input checksums, package versions, git commit and dirty flag, host, runner, start and end
    time, wall time (docs/thesis/config.md: the resolved config is written into every stage's manifest)."""
    import platform

    from services.common import config
    root, _ = demo_run
    resolved = json.loads(json.dumps(config.load(DEMO, [])))
    for stage, name in STAGE_MANIFESTS.items():
        m = json.loads((root / name).read_text())
        assert m["stage"] == stage and m["experiment"] == "demo", name
        assert m["config"] == resolved, name
        assert re.fullmatch(r"[0-9a-f]{40}", m["git"]["commit"]) and isinstance(m["git"]["dirty"], bool), name
        assert m["versions"]["python"] == platform.python_version(), name
        assert m["host"]["runner"] in ("local", "docker") and m["host"]["cpus"] > 0, name
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", m["started"]) and m["started"] <= m["finished"], name
        assert m["wall_s"] > 0, name
        checksums = re.findall(r'"[0-9a-f]{64}"', json.dumps({k: v for k, v in m.items() if k != "config"}))
        assert checksums, f"{name}: no input checksum"


def test_after_make_demo_every_folder_holds_what_the_quick_start_lists(demo_run):
    """docs/quickstart.md, "What every folder then holds"."""
    root, _ = demo_run
    raw, yolo, run, art = (root / p for p in ("datasets/demo/raw", "datasets/demo/yolo", "runs/demo/train",
                                              "artifacts/demo"))
    for split in ("train", "val"):
        assert list((raw / "leftImg8bit" / split).glob("*/*.png")), split
        assert (raw / f"anno_{split}.mat").is_file()
    for split in ("train", "selection", "val"):
        images = sorted((yolo / split / "images").iterdir())
        assert images and len(list((yolo / split / "labels").iterdir())) > 0, split
        source = next(raw.glob(f"leftImg8bit/*/*/{images[0].name}"))
        assert images[0].stat().st_ino == source.stat().st_ino, split  # a hard link to raw/, not a copy
    for name in ("demo.yaml", "val_gt.json", "val_coco.json", "calib.txt", "manifest.json"):
        assert (yolo / name).is_file(), name
    for name in ("results.csv", "results.png", "weights/last.pt", "weights/best.pt", "stage.json"):
        assert (run / name).is_file(), name
    assert list(run.glob("events.out.tfevents.*"))  # TensorBoard's events
    for name in ("weights/best.pt", "weights/last.pt", "train/manifest.json", "models/demo.onnx",
                 "models/demo.rknn-head.onnx", "models/demo_int8_rk3588.rknn", "models/demo_int8_rk3588.manifest.json",
                 "metrics/export.json", "metrics/quantization.json", "metrics/summary.md", "rknn/toolkit.log",
                 "board/demo_int8_rk3588.rknn", "board/detect.py", "board/bundle.json"):
        assert (art / name).is_file(), name
    for fmt in ("pt", "onnx", "onnx-rknn-head", "rknn"):
        assert (art / "metrics" / f"{fmt}.json").is_file() and (art / "metrics" / f"{fmt}.val.detections.json").is_file()
    assert list((art / "rknn").glob("calib-*/*.png"))  # the toolkit's caches: the calibration images


def test_make_demo_ends_with_the_summary_table_that_summary_md_holds(demo_run):
    """README.md: `make demo` ends by printing the evaluation summary of every format, also written to
    artifacts/demo/metrics/summary.md."""
    root, proc = demo_run
    md = [[c.strip() for c in line.strip("|").split("|")] for line in
          (root / "artifacts/demo/metrics/summary.md").read_text().splitlines() if line.startswith("| ")][1:]
    assert [r[0] for r in md] == ["pt", "onnx", "onnx-rknn-head", "rknn"]
    out = proc.stdout.rstrip().splitlines()
    title = max(i for i, line in enumerate(out) if line == "artifacts/demo/metrics/summary.md")
    printed = out[title + 3:]  # after the title, the header and the dashes: the rows, to the end of the run
    assert [line.split() for line in printed] == [[c for c in r if c] for r in md], out[title:]


@pytest.fixture(scope="module")
def offline_fit(tmp_path_factory, demo_raw) -> tuple[Path, Path, Path, object]:
    """The demo dataset, then `fit` with train.model=yolo11n.pt (not on disk) and PIPELINE_OFFLINE=1
    (what OFFLINE=1 passes to every stage), under tests/netguard: every network attempt is logged, and
    the guard says it was loaded in the stage."""
    work = tmp_path_factory.mktemp("offline-weights")
    root = demo_root(work / "root", demo_raw)
    assert run_module("dataset", ["--config", DEMO], root).returncode == 0
    net, loaded = work / "network-attempts.log", work / "guard-loaded.log"
    proc = run_module("fit", ["--config", DEMO, "--experiment", "pretrained", "train.model=yolo11n.pt"], root,
                      env={"PIPELINE_OFFLINE": "1", "PYTHONPATH": str(ROOT / "tests" / "netguard"),
                           "NETGUARD_LOG": str(net), "NETGUARD_LOADED": str(loaded)})
    return root, net, loaded, proc


@pytest.mark.slow  # a dataset build and the fit stage's start: about a minute
def test_offline_pretrained_weights_not_on_disk_are_one_line_saying_where_to_put_them(offline_fit):
    """docs/thesis/training.md: `train.model: yolo11n.pt` is looked up as a path, then in datasets/weights/;
    offline the stage stops with one line saying where to put the file."""
    root, _, loaded, proc = offline_fit
    assert "services.fit" in loaded.read_text()  # the guard was in the stage's process
    line = one_error(proc, who="fit")
    assert line.startswith("fit: error: train.model=yolo11n.pt is not on disk"), line
    assert line.endswith("it is fetched into datasets/weights/yolo11n.pt, or copy it there, or set "
                         "train.model=PATH"), line
    assert not (root / "runs" / "pretrained").exists()


@pytest.mark.slow
def test_offline_means_no_network_attempt_for_missing_weights(offline_fit):
    """README.md and docs/thesis/data.md: OFFLINE=1 (any stage: PIPELINE_OFFLINE=1) never touches the
    network. tests/netguard logs every attempt, and proves it ran in the stage."""
    _, net, loaded, _ = offline_fit
    assert "services.fit" in loaded.read_text()
    assert not net.exists(), net.read_text()
