"""Loading what the stages wrote: the runs of an experiment or a sweep, their metrics, detections and
training curves, the board reports copied back from the board, and the checks that they can be
averaged and reported together.

The bottom of the report: it imports nothing else of the report, so the tables, the figures and the
page can all read runs without importing each other."""
import csv
import json
from dataclasses import dataclass, field
from pathlib import Path

from services.common import config, files, paths
from services.common.layout import Experiment
from services.common.log import UserError, read_json_object, reading, warn

STAGE = "report"
FORMAT_ORDER = ("pt", "onnx", "onnx-rknn-head", "rknn")
# board_report.json (services/board/detect.py): the fields read, and the stages of the pipeline shown
BOARD_FIELDS = ("backend", "cores", "model", "frames", "latency_ms", "throughput_fps", "platform", "bundle")
BOARD_STAGES = ("read", "pre", "npu", "post")
# What names the model a board report measured, as bundle.json records it and the board report copies
# it: the names alone repeat when an experiment is trained and converted again, the time its bundle was
# built does not (the convert stage writes the bundle once per .rknn it builds).
MODEL_KEYS = ("experiment", "model", "onnx", "built")
X86 = ("x86_64", "amd64", "i386", "i686", "x86")


@dataclass
class Run:
    """One trained, evaluated model: a sweep's trial or an experiment."""
    trial: str
    experiment: str
    variant: str
    seed: int | None
    metrics: dict = field(default_factory=dict)  # format -> its metrics json
    curves: list = field(default_factory=list)   # results.csv rows, numbers as floats
    pr: dict = field(default_factory=dict)       # (format, set) -> precision at 101 recall points
    board: list = field(default_factory=list)    # its board reports, as board_measurement reads them


def format_rank(fmt: str):
    return (FORMAT_ORDER.index(fmt), fmt) if fmt in FORMAT_ORDER else (len(FORMAT_ORDER), fmt)


# ---------------------------------------------------------------------------------------- an experiment
def experiment_run(cfg: dict, root: Path) -> Run:
    exp = cfg["experiment"]
    metrics = load_metrics(exp, root)
    if not metrics:
        raise UserError(f"experiment '{exp}' has no evaluated run: {paths.rel(paths.artifacts_dir(exp, root), root)}"
                        f"/metrics/ holds no <format>.json; run `make train` (or `make evaluate`) with this config "
                        f"first")
    # the seed it was trained with, as recorded (the config may have changed since)
    seed = next(iter(metrics.values()))["config"]["train"]["seed"]
    return Run(trial=exp, experiment=exp, variant=exp, seed=seed, metrics=metrics)


# ---------------------------------------------------------------------------------------- a sweep
def sweep_runs(name: str, root: Path) -> tuple[list[Run], dict, list[str], Path]:
    """The sweep's evaluated trials as runs, its variants, a note per trial left out, and sweep.json."""
    sweep_file, variants, trials = read_sweep(name, root)
    runs, notes = [], []
    for t in trials:
        run, note = trial_run(t, root)
        if run:
            runs.append(run)
        else:
            notes.append(note)
    for n in notes:
        warn(STAGE, n)
    if not runs:
        raise UserError(f"sweep '{name}' has no evaluated trial ({len(trials)} trial(s): "
                        f"{', '.join(sorted({t['status'] for t in trials})) or 'none'}); run `make sweep SWEEP={name}` "
                        f"with the evaluate stage first")
    return runs, variants, notes, sweep_file


def read_sweep(name: str, root: Path) -> tuple[Path, dict, list[dict]]:
    sweep_file = paths.artifacts_dir(name, root) / "sweep.json"
    if not config.NAME_RE.match(name):
        raise UserError(f"sweep name {name!r} must be a plain folder name (letters, digits, '_', '-', '.')")
    if not sweep_file.is_file():
        known = sorted(p.parent.name for p in (root / "artifacts").glob("*/sweep.json"))
        raise UserError(f"unknown sweep '{name}': {paths.rel(sweep_file, root)} does not exist; run "
                        f"`make sweep SWEEP={name}` first (sweeps with results: {', '.join(known) or 'none'})")
    with reading(sweep_file, "the sweep's record", f"`make sweep SWEEP={name}` writes it again"):
        sweep = files.read_json(sweep_file)
        variants = {v: list(o) for v, o in sweep["variants"].items()}
        trials = [dict(t) for t in sweep["trials"]]
        if any(k not in t for t in trials for k in ("trial", "experiment", "variant", "status")):
            raise ValueError("a trial lacks trial, experiment, variant or status")
        unlisted = sorted({t["variant"] for t in trials} - set(variants))
        if unlisted:  # the record was edited, or half of two sweeps: nothing to group those trials under
            raise ValueError(f"its trials are of variant(s) {', '.join(unlisted)}, which its variants "
                             f"({', '.join(variants) or 'none'}) do not list")
    return sweep_file, variants, trials


def trial_run(t: dict, root: Path) -> tuple[Run | None, str]:
    """A trial's run, or None and the note that says why the report leaves it out."""
    if t["status"] not in ("done", "skipped"):
        where = f" at stage '{t['stage']}'" if t.get("stage") else ""
        return None, f"trial {t['trial']} {t['status']}{where} (exit {t.get('exit')}); see {t.get('log', 'its log')}"
    run = Run(trial=t["trial"], experiment=t["experiment"], variant=t["variant"], seed=t.get("seed"))
    run.metrics = load_metrics(t["experiment"], root)
    if not run.metrics:
        folder = paths.rel(Experiment(t["experiment"], root).metrics, root)
        return None, (f"trial {t['trial']} is {t['status']} but {folder}/ holds no metrics (the sweep has no "
                      f"evaluate stage, or they were removed)")
    return run, ""


# ---------------------------------------------------------------------------------------- files of a run
def load_metrics(experiment: str, root: Path) -> dict:
    """format -> metrics json, for every format the experiment was evaluated in, in chain order."""
    out = {}
    folder = Experiment(experiment, root).metrics
    for p in sorted(folder.glob("*.json")) if folder.is_dir() else []:
        if p.stem in FORMAT_ORDER:  # a damaged one must not silently drop out of the averages
            with reading(p, "a model's metrics", f"`make {'convert' if p.stem == 'rknn' else 'evaluate'} FORCE=1` "
                                                 f"writes it again"):
                m = json.loads(p.read_text())
                if not isinstance(m, dict) or "sets" not in m or "format" not in m:
                    raise ValueError("not a metrics file")
        else:  # the other stages' files beside them (export.json, quantization.json), or another format's
            m = files.read_json(p)
            if not isinstance(m, dict) or "sets" not in m or "format" not in m:
                continue
        out[m["format"]] = m
    return dict(sorted(out.items(), key=lambda kv: format_rank(kv[0])))


def metrics_files(run: Run, root: Path) -> list[Path]:
    return [Experiment(run.experiment, root).metrics_of(f) for f in run.metrics]


def coco_truth(m: dict, set_name: str, root: Path) -> Path:
    """The COCO ground truth of an evaluation set, where the evaluator found it."""
    if set_name == "coco_person":
        return paths.yolo_dir("coco", root) / "person_val2017.json"
    return paths.yolo_dir(m["config"]["dataset"]["name"], root) / "val_coco.json"


def load_detections(m: dict, set_name: str, root: Path) -> list:
    path = root / m["sets"][set_name]["detections_file"]
    with reading(path, "COCO detections", "the stage that scored them writes them again with FORCE=1"):
        return json.loads(path.read_text())


def read_curves(run: Run, root: Path) -> Path | None:
    """ultralytics' per-epoch results.csv of the run's training, as floats."""
    csv_path = paths.runs_dir(run.experiment, root) / "train" / "results.csv"
    if not csv_path.is_file():
        return None
    with reading(csv_path, "ultralytics' training curves", "it is written again by `make fit FRESH=1`"):
        rows = list(csv.DictReader(csv_path.open()))
        run.curves = [{k.strip(): float(v) for k, v in row.items() if k and v not in (None, "")} for row in rows]
    return csv_path


# ---------------------------------------------------------------------------------------- board reports
def read_board_reports(run: Run, root: Path) -> list[Path]:
    """The board reports copied back for the run's experiment (board-reports/*.json) into Run.board,
    each checked to have measured the experiment's own model; the files read."""
    exp = Experiment(run.experiment, root)
    found = sorted(exp.board_reports.glob("*.json")) if exp.board_reports.is_dir() else []
    if not found:
        return []
    bundle = experiment_bundle(exp, root)
    what, fix = "a board report (detect.py's board_report.json)", "copy it from the board again, or remove it"
    for path in found:
        report = read_json_object(path, what, fix, BOARD_FIELDS)
        with reading(path, what, fix):  # a field of the wrong kind is the file's fault: one line, not a traceback
            check_same_model(path, report, bundle, exp, root)
            run.board.append(board_measurement(path, report, root))
    return [exp.bundle_manifest, *found]


def experiment_bundle(exp: Experiment, root: Path) -> dict:
    """bundle.json of the experiment's board bundle: the model its board reports must have measured."""
    again = "then measure on the board again: a new conversion is another model"
    if not exp.bundle_manifest.is_file():
        raise UserError(f"{paths.rel(exp.board_reports, root)}/ holds board reports, but "
                        f"{paths.rel(exp.bundle_manifest, root)} (the bundle they must have measured) does not "
                        f"exist; `make convert` with {exp.name}'s config writes it ({again}), or remove them")
    return read_json_object(exp.bundle_manifest, "the board bundle's record", f"`make convert FORCE=1` writes it "
                            f"again ({again})", ("experiment", "model", "built"))


def check_same_model(path: Path, report: dict, bundle: dict, exp: Experiment, root: Path) -> None:
    """Refuses a board report of another model than the experiment's bundle holds: its latency would
    be shown beside this model's accuracy. The line names both models."""
    ran = report["bundle"] or {}
    ours = bundle.get("onnx") if report["backend"] == "onnx" else bundle["model"]
    sha = (bundle.get("files") or {}).get(ours) or "not recorded"
    measured = report.get("model_sha256")  # schema 1 reports from before it: the bundle's identity alone
    same_bytes = measured is None or sha == "not recorded" or measured == sha
    same_bundle = all(ran.get(k) == bundle.get(k) for k in MODEL_KEYS) and report["model"] == ours
    if same_bundle and same_bytes:
        return
    if same_bundle or ran.get("experiment") == exp.name and not same_bytes:  # the bytes say it best
        raise UserError(f"{paths.rel(path, root)} measured another model: {report['model']} with sha256 "
                        f"{measured[:16]}, not {exp.name}'s {ours} (sha256 {sha[:16]}, "
                        f"{paths.rel(exp.bundle_manifest, root)}); measure again with that bundle, or remove the file")
    raise UserError(f"{paths.rel(path, root)} measured another model: {report['model']} of experiment "
                    f"'{ran.get('experiment')}' (bundle built {ran.get('built')}), not {exp.name}'s {ours} "
                    f"(sha256 {sha[:16]}, bundle built {bundle['built']}, {paths.rel(exp.bundle_manifest, root)}); "
                    f"measure again with that bundle, or remove the file")


def board_measurement(path: Path, report: dict, root: Path) -> dict:
    """What the report shows of one board report: where it ran, the format of the model that ran, on
    which cores and in how many tiles, and its numbers (the mean per frame of each stage, frames/s)."""
    device, on_board = measured_on(report)
    latency = report["latency_ms"]
    return {"file": paths.rel(path, root), "measured_on": device, "on_board": on_board,
            "backend": report["backend"], "runtime": report.get("runtime"),
            # the bundle's ONNX is the float model the .rknn was built from: the onnx-rknn-head format
            "format": "onnx-rknn-head" if report["backend"] == "onnx" else "rknn",
            "cores": ", ".join(map(str, report["cores"])), "contexts": len(report["cores"]),
            "tiles": report.get("tiles") or 1,  # reports from before --tiles ran the whole frame
            "frames": report["frames"], "interrupted": report.get("interrupted", False),
            "latency_ms": {k: (latency.get(k) or {}).get("mean") for k in BOARD_STAGES},
            "fps": report["throughput_fps"].get("mean")}


def measured_on(report: dict) -> tuple[str, bool]:
    """Where a board report was measured, as the report labels it, and whether that was the board's
    NPU. Only the rknn backend runs on the NPU: `detect.py --backend onnx` runs the same pipeline on
    any CPU (a PC's, to rehearse), so its numbers are labelled with that CPU, never as the board."""
    where = report["platform"] or {}
    if report["backend"] == "rknn":
        return f"{where.get('soc') or where.get('bundle_platform') or 'board'} NPU (board)", True
    machine = str(where.get("machine") or "unknown")
    return f"{'x86' if machine.lower() in X86 else machine} CPU, onnxruntime", False


# ---------------------------------------------------------------------------------------- checks
def evaluated_sets(runs: list[Run]) -> list[str]:
    """Every set some run was evaluated on, val first (the figures show the first)."""
    return sorted({s for r in runs for m in r.metrics.values() for s in m["sets"]}, key=lambda s: (s != "val", s))


def evaluation_settings(m: dict) -> dict:
    """What a metrics file's numbers depend on besides the model, under the names users set them by."""
    s, fp = m["settings"], m.get("fingerprint", {})
    return {"evaluate.imgsz": s["imgsz_hw"], "evaluate.conf": s["conf"], "evaluate.iou": s["iou"],
            "evaluate.max_det": s["max_det"], "evaluate.sets": sorted(m["sets"]),
            "evaluate.tiles": s.get("tiles", 1), "evaluate.tile_overlap": s.get("tile_overlap") if s.get("tiles", 1) > 1
            else None,  # metrics from before sliced inference ran the whole frame
            "the evaluator's version": fp.get("evaluator_version"),
            "the ground truth (dataset)": fp.get("ground_truth_sha256")}


def check_settings(name: str, runs: list[Run]) -> None:
    """Runs of one variant (its seeds) are averaged format by format: their settings must agree."""
    for variant in dict.fromkeys(r.variant for r in runs):
        group = [r for r in runs if r.variant == variant]
        for fmt in sorted({f for r in group for f in r.metrics}, key=format_rank):
            have = [(r, evaluation_settings(r.metrics[fmt])) for r in group if fmt in r.metrics]
            first_run, first = have[0]
            for r, s in have[1:]:
                differ = [k for k in first if first[k] != s[k]]
                if differ:
                    shown = "; ".join(f"{k}: {_short(first[k])} in {first_run.experiment}, {_short(s[k])} in "
                                      f"{r.experiment}" for k in differ)
                    raise UserError(f"{name}: the {fmt} runs of variant '{variant}' were evaluated with different "
                                    f"settings ({shown}) and cannot be averaged; evaluate them again with the same "
                                    f"settings (`make evaluate FORCE=1` with the trial's overrides), or report them "
                                    f"apart")


def _short(v) -> str:
    text = str(v)
    return text if len(text) <= 40 else text[:37] + "..."


def check_inputs(runs: list[Run], root: Path, sets: list[str]) -> list[Path]:
    """Before any work: every detections file the metrics name exists, and the ground truth beside the
    dataset is the one they were scored against (the precision-recall curves and the pictures read both)."""
    used, digests = [], {}
    for r in runs:
        for fmt, m in r.metrics.items():
            for s in sets:
                if s in m["sets"]:
                    used += check_scored_set(r, fmt, s, root, digests)
    return used


def check_scored_set(r: Run, fmt: str, s: str, root: Path, digests: dict) -> list[Path]:
    """One format's detections on one set and their ground truth: [detections, ground truth]."""
    m = r.metrics[fmt]
    dets = root / m["sets"][s]["detections_file"]
    redo = "`make convert FORCE=1`" if fmt == "rknn" else "`make evaluate FORCE=1`"
    if not dets.is_file():
        raise UserError(f"{paths.rel(dets, root)} (the {fmt} detections of {r.experiment}) is missing; "
                        f"{redo} with the experiment's config writes it again")
    gt = coco_truth(m, s, root)
    if not gt.is_file():
        raise UserError(f"{paths.rel(gt, root)} (the {s} set's ground truth) is missing; "
                        f"`make dataset` builds it again")
    recorded = (m.get("fingerprint", {}).get("ground_truth_sha256") or {}).get(s)
    if gt not in digests:  # one digest per file, however many runs were scored against it
        digests[gt] = files.sha256_file(gt)
    if recorded and digests[gt] not in recorded:
        raise UserError(f"{paths.rel(gt, root)} is not the ground truth {r.experiment}'s {fmt} model was "
                        f"scored against (the dataset was rebuilt since); evaluate it again "
                        f"({redo}) or rebuild the dataset it was scored on")
    return [dets, gt]
