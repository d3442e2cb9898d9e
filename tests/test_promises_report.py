"""make report's promises (docs/thesis/report.md), on the synthetic sweep of test_report.py (no
training): runs of one variant evaluated with different settings are refused for every compared
setting, naming it and both runs, before anything is written; a report made from other inputs or
options moves the previous one aside; report.json lists every file the numbers came from with its
sha256."""
import hashlib
import json
from pathlib import Path

import pytest

from tests.helpers import one_error, run_module
from tests.test_report import write_synthetic_sweep

SWEEP = "syn"
FIRST, ODD = "syn-a-s0", "syn-a-s1"  # two seeds of variant a: the second one's pt metrics are altered


def metrics_file(root: Path, experiment: str, fmt: str = "pt") -> Path:
    return root / "artifacts" / experiment / "metrics" / f"{fmt}.json"


def alter(path: Path, change) -> None:
    """Rewrite a JSON file the stages wrote, changed by `change`."""
    m = json.loads(path.read_text())
    change(m)
    path.write_text(json.dumps(m))


# Each setting docs/thesis/report.md says is compared ("compared: evaluate.imgsz as the evaluator used it,
# conf, iou, max_det, sets, tiles and tile_overlap, the evaluator's version and the ground truth's checksum"): how one run gets
# another value of it, the name the line gives it, and the two values as the line shows them.
SETTINGS = {
    "imgsz": (lambda m: m["settings"].update(imgsz_hw=[288, 288]), "evaluate.imgsz", "[256, 256]", "[288, 288]"),
    "conf": (lambda m: m["settings"].update(conf=0.01), "evaluate.conf", "0.001", "0.01"),
    "iou": (lambda m: m["settings"].update(iou=0.6), "evaluate.iou", "0.7", "0.6"),
    "max_det": (lambda m: m["settings"].update(max_det=100), "evaluate.max_det", "300", "100"),
    "sets": (lambda m: m["sets"].update(coco_person=m["sets"]["val"]), "evaluate.sets", "['val']",
             "['coco_person', 'val']"),
    "tiles": (lambda m: m["settings"].update(tiles=3, tile_overlap=0.1), "evaluate.tiles", "1", "3"),
    "evaluator": (lambda m: m["fingerprint"].update(evaluator_version=2), "the evaluator's version", "1", "2"),
    "ground truth": (lambda m: m["fingerprint"].update(ground_truth_sha256={"val": ["0" * 64]}),
                     "the ground truth (dataset)", "{'val': [", "{'val': ['000000"),
}


@pytest.mark.parametrize("setting", list(SETTINGS))
def test_runs_evaluated_with_any_other_setting_are_refused_naming_it(tmp_path, setting):
    change, key, first, odd = SETTINGS[setting]
    root = without_failed_trials(write_synthetic_sweep(tmp_path, SWEEP))
    alter(metrics_file(root, ODD), change)
    line = one_error(run_module("report", ["--sweep", SWEEP], root, timeout=300), who="report")
    assert line.startswith(f"report: error: sweep '{SWEEP}': the pt runs of variant 'a' were evaluated with "
                           f"different settings ({key}: {first}"), line
    assert f" in {FIRST}, {odd}" in line and f" in {ODD})" in line and "cannot be averaged" in line, line
    assert "make evaluate FORCE=1" in line, line
    assert not (root / "artifacts" / SWEEP / "report").exists()
    assert not list((root / "artifacts" / SWEEP).glob("report*"))


def report_json(root: Path, folder: str = "report") -> dict:
    return json.loads((root / "artifacts" / SWEEP / folder / "report.json").read_text())


def test_a_report_from_other_options_or_inputs_moves_the_previous_one_aside(tmp_path):
    root = write_synthetic_sweep(tmp_path, SWEEP)
    report = root / "artifacts" / SWEEP / "report"
    first = run_module("report", ["--sweep", SWEEP, "--examples", "1"], root, timeout=300)
    assert first.returncode == 0, first.stderr[-2000:]
    assert "moved aside" not in first.stdout
    first_json = report_json(root)

    # other options: --examples 0
    second = run_module("report", ["--sweep", SWEEP, "--examples", "0"], root, timeout=300)
    assert second.returncode == 0, second.stderr[-2000:]
    (aside,) = report.parent.glob("report.old-*")
    assert f"report: the previous report (other inputs or options) was moved aside to artifacts/{SWEEP}/" \
           f"{aside.name}" in second.stdout, second.stdout
    assert json.loads((aside / "report.json").read_text()) == first_json  # the old one, whole
    assert (aside / "figures" / "examples.png").is_file() and not (report / "figures" / "examples.png").exists()
    assert report_json(root)["fingerprint"]["options"]["examples"] == 0

    # other inputs: one run's metrics evaluated again (a new AP50), same options
    alter(metrics_file(root, "syn-b-s0", "rknn"), lambda m: m["sets"]["val"]["coco"].update(AP50=0.5))
    third = run_module("report", ["--sweep", SWEEP, "--examples", "0"], root, timeout=300)
    assert third.returncode == 0, third.stderr[-2000:]
    asides = sorted(report.parent.glob("report.old-*"))
    assert len(asides) == 2 and aside in asides
    (newer,) = [p for p in asides if p != aside]
    assert f"moved aside to artifacts/{SWEEP}/{newer.name}" in third.stdout
    row = next(r for r in report_json(root)["rows"] if (r["variant"], r["format"], r["set"]) == ("b", "rknn", "val"))
    assert 0.5 in row["AP50"]["values"]
    assert json.loads((newer / "report.json").read_text())["fingerprint"]["options"]["examples"] == 0

    # the very same inputs and options again: replaced, no third copy
    fourth = run_module("report", ["--sweep", SWEEP, "--examples", "0"], root, timeout=300)
    assert fourth.returncode == 0 and "moved aside" not in fourth.stdout
    assert sorted(report.parent.glob("report.old-*")) == asides


def test_report_json_lists_every_source_file_with_its_sha256(tmp_path):
    """The files the numbers came from: the sweep's record, every trial's metrics and detections, the
    ground truth they were scored against and the training curves; each with the sha256 of its bytes.
    The failed trial (a-s2) contributes nothing."""
    root = write_synthetic_sweep(tmp_path, SWEEP)
    proc = run_module("report", ["--sweep", SWEEP, "--examples", "0"], root, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    expected = {f"artifacts/{SWEEP}/sweep.json", "datasets/demo/yolo/val_coco.json"}
    for exp in (f"{SWEEP}-{v}-s{s}" for v in "ab" for s in (0, 1)):
        expected.add(f"runs/{exp}/train/results.csv")
        for fmt in ("pt", "onnx", "onnx-rknn-head", "rknn"):
            expected |= {f"artifacts/{exp}/metrics/{fmt}.json", f"artifacts/{exp}/metrics/val-{fmt}.json"}
    listed = report_json(root)["fingerprint"]["inputs"]
    assert set(listed) == expected, set(listed) ^ expected
    for name, digest in listed.items():
        assert digest == hashlib.sha256((root / name).read_bytes()).hexdigest(), name


def without_failed_trials(root: Path) -> Path:
    """The synthetic sweep without its failed trial, whose warning would share stderr with a refusal."""
    alter(root / "artifacts" / SWEEP / "sweep.json",
          lambda s: s.update(trials=[t for t in s["trials"] if t["status"] == "done"]))
    return root


def test_a_missing_detections_file_is_refused_with_the_command_that_mends_it(tmp_path):
    root = without_failed_trials(write_synthetic_sweep(tmp_path, SWEEP))
    (root / "artifacts/syn-b-s1/metrics/val-rknn.json").unlink()
    line = one_error(run_module("report", ["--sweep", SWEEP], root, timeout=300), who="report")
    assert line == ("report: error: artifacts/syn-b-s1/metrics/val-rknn.json (the rknn detections of syn-b-s1) is "
                    "missing; `make convert FORCE=1` with the experiment's config writes it again"), line
    assert not list((root / "artifacts" / SWEEP).glob("report*"))


def test_a_dataset_rebuilt_since_the_evaluation_is_refused(tmp_path):
    """The ground truth beside the dataset no longer has the checksum the metrics were scored against."""
    root = without_failed_trials(write_synthetic_sweep(tmp_path, SWEEP))
    truth = root / "datasets/demo/yolo/val_coco.json"
    truth.write_text(json.dumps(json.loads(truth.read_text()), indent=1))  # rebuilt: other bytes
    line = one_error(run_module("report", ["--sweep", SWEEP], root, timeout=300), who="report")
    assert line.startswith("report: error: datasets/demo/yolo/val_coco.json is not the ground truth syn-a-s0's pt "
                           "model was scored against (the dataset was rebuilt since); evaluate it again "
                           "(`make evaluate FORCE=1`)"), line
    assert not list((root / "artifacts" / SWEEP).glob("report*"))


def test_a_figure_without_data_is_left_out_and_the_notes_say_so_as_the_missing_board_reports(tmp_path):
    """No training curves (no results.csv): the training figure is left out and the notes say so; no
    board report: the board section says every latency is the evaluator's on x86."""
    root = write_synthetic_sweep(tmp_path, SWEEP)
    for csv in root.glob("runs/*/train/results.csv"):
        csv.unlink()
    proc = run_module("report", ["--sweep", SWEEP, "--examples", "1"], root, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    data = report_json(root)
    figures = {f["name"] for f in data["figures"]}
    assert "training" not in figures and {"mr_fppi", "precision_recall", "conversion", "size_latency"} <= figures
    (note,) = [n for n in data["notes"] if n.startswith("figure training left out: ")]
    folder = root / "artifacts" / SWEEP / "report"
    assert not list((folder / "figures").glob("training.*"))
    md = (folder / "report.md").read_text()
    assert note in md and "](figures/training.png)" not in md
    board = md.split("## Board measurements\n", 1)[1].split("\n## ", 1)[0]
    assert "No board report: every latency here is the evaluator's on x86" in board


def test_a_sliced_evaluation_is_labelled_with_its_tiles(tmp_path):
    """docs/thesis/report.md: a model evaluated with evaluate.tiles > 1 shows as `<format>, N tiles`."""
    from tests.test_report import md_rows
    root = without_failed_trials(write_synthetic_sweep(tmp_path, SWEEP))
    for exp in (FIRST, ODD):
        alter(metrics_file(root, exp, "rknn"), lambda m: m["settings"].update(tiles=3, tile_overlap=0.1))
    proc = run_module("report", ["--sweep", SWEEP], root, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    shown = md_rows((root / "artifacts" / SWEEP / "report" / "report.md").read_text(), "Metrics on val")
    labels = {(r["variant"], r["format"]) for r in shown}
    assert ("a", "rknn, 3 tiles") in labels and ("a", "rknn") not in labels
    assert ("b", "rknn") in labels and ("a", "onnx") in labels


def test_a_sweep_record_whose_variants_do_not_match_its_trials_is_one_line(tmp_path):
    """An edited or mixed sweep.json (its trials of variants it does not list): one line, not a traceback."""
    root = write_synthetic_sweep(tmp_path, SWEEP)
    alter(root / "artifacts" / SWEEP / "sweep.json", lambda s: s.update(variants={"c": ["x=3"]}))
    line = one_error(run_module("report", ["--sweep", SWEEP], root, timeout=300), who="report")
    assert "sweep.json (the sweep's record) cannot be read" in line, line
    assert "variant(s) a, b, which its variants (c) do not list" in line and "make sweep SWEEP=syn" in line, line
    assert not (root / "artifacts" / SWEEP / "report").exists()
