"""The report over one experiment or a sweep: tables and figures from what the stages wrote.

artifacts/<NAME>/report/      NAME: the experiment, or the sweep
  report.md        the tables, the figures (figures/*.png) and notes
  report.html      the same as one self-contained page: figures embedded as data URIs
  tables.tex       booktabs tables (\\usepackage{booktabs}): one row per variant x format, mean ± std over seeds
  report.json      every number of the tables at full precision, and the files they were computed from
  figures/         *.pdf (vector, for LaTeX) and *.png of each figure

Numbers are the mean and the sample standard deviation (ddof=1) over a variant's runs (its seeds), with
n; one run is a valid report (n = 1, no std). Runs are averaged only when they were evaluated with the
same settings: the report refuses otherwise, naming the keys.
"""
import base64
import html
import json
import math
import re
import statistics
from dataclasses import dataclass, field
from pathlib import Path

from tqdm import tqdm

from services.common import config, files, paths
from services.common.log import UserError, info, reading, table, warn

STAGE = "report"
FORMAT_ORDER = ["pt", "onnx", "onnx-rknn-head", "rknn"]
FLOAT_FOR_EXAMPLES = ["onnx-rknn-head", "onnx", "pt"]  # the INT8 model is built from the first


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


# What the tables show per variant x format x set: key, heading, value from a metrics json, digits.
def _mr(setup):
    return lambda m, s: None if not m["sets"][s].get("miss_rate") else 100 * m["sets"][s]["miss_rate"][setup]


COLUMNS = [
    ("AP50", "AP50", lambda m, s: m["sets"][s]["coco"]["AP50"], 3),
    ("AP", "AP50-95", lambda m, s: m["sets"][s]["coco"]["AP"], 3),
    ("MR2_reasonable", "MR-2 Reasonable %", _mr("Reasonable"), 2),
    ("MR2_all", "MR-2 All %", _mr("All"), 2),
    ("model_mb", "MB", lambda m, s: m["model_bytes"] / 1e6, 2),
    ("latency_ms", "ms/image", lambda m, s: m["latency_ms_per_image"]["mean"], 1),
]
# The conversion cost: how much each step of pt -> onnx -> onnx-rknn-head -> rknn changes these.
STEP_COLUMNS = [c for c in COLUMNS if c[0] in ("AP50", "MR2_reasonable")]


# ---------------------------------------------------------------------------------------- runs
def run_experiment(cfg: dict, root: Path = paths.ROOT, examples: int = 3, score: float = 0.25) -> dict:
    exp = cfg["experiment"]
    metrics = load_metrics(exp, root)
    if not metrics:
        raise UserError(f"experiment '{exp}' has no evaluated run: {paths.rel(paths.artifacts_dir(exp, root), root)}"
                        f"/metrics/ holds no <format>.json; run `make train` (or `make evaluate`) with this config "
                        f"first")
    # the seed it was trained with, as recorded (the config may have changed since)
    seed = next(iter(metrics.values()))["config"]["train"]["seed"]
    run = Run(trial=exp, experiment=exp, variant=exp, seed=seed, metrics=metrics)
    return build(exp, "experiment", [run], {exp: []}, [], root, examples, score, inputs=[])


def run_sweep(name: str, root: Path = paths.ROOT, examples: int = 3, score: float = 0.25) -> dict:
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
    runs, notes = [], []
    for t in trials:
        if t["status"] not in ("done", "skipped"):
            where = f" at stage '{t['stage']}'" if t.get("stage") else ""
            notes.append(f"trial {t['trial']} {t['status']}{where} (exit {t.get('exit')}); "
                         f"see {t.get('log', 'its log')}")
            continue
        run = Run(trial=t["trial"], experiment=t["experiment"], variant=t["variant"], seed=t.get("seed"))
        run.metrics = load_metrics(t["experiment"], root)
        if not run.metrics:
            folder = paths.rel(paths.artifacts_dir(t["experiment"], root) / "metrics", root)
            notes.append(f"trial {t['trial']} is {t['status']} but {folder}/ holds no metrics (the sweep has no "
                         f"evaluate stage, or they were removed)")
            continue
        runs.append(run)
    for n in notes:
        warn(STAGE, n)
    if not runs:
        raise UserError(f"sweep '{name}' has no evaluated trial ({len(trials)} trial(s): "
                        f"{', '.join(sorted({t['status'] for t in trials})) or 'none'}); run `make sweep SWEEP={name}` "
                        f"with the evaluate stage first")
    return build(name, "sweep", runs, variants, notes, root, examples, score, inputs=[sweep_file])


def load_metrics(experiment: str, root: Path) -> dict:
    """format -> metrics json, for every format the experiment was evaluated in, in chain order."""
    out = {}
    folder = paths.artifacts_dir(experiment, root) / "metrics"
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


def format_rank(fmt: str):
    return (FORMAT_ORDER.index(fmt), fmt) if fmt in FORMAT_ORDER else (len(FORMAT_ORDER), fmt)


def evaluation_settings(m: dict) -> dict:
    """What a metrics file's numbers depend on besides the model, under the names users set them by."""
    s, fp = m["settings"], m.get("fingerprint", {})
    return {"evaluate.imgsz": s["imgsz_hw"], "evaluate.conf": s["conf"], "evaluate.iou": s["iou"],
            "evaluate.max_det": s["max_det"], "evaluate.sets": sorted(m["sets"]),
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
                if s not in m["sets"]:
                    continue
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
                if gt not in digests:
                    digests[gt] = files.sha256_file(gt)
                if recorded and digests[gt] not in recorded:
                    raise UserError(f"{paths.rel(gt, root)} is not the ground truth {r.experiment}'s {fmt} model was "
                                    f"scored against (the dataset was rebuilt since); evaluate it again "
                                    f"({redo}) or rebuild the dataset it was scored on")
                used += [dets, gt]
    return used


def coco_truth(m: dict, set_name: str, root: Path) -> Path:
    """The COCO ground truth of an evaluation set, where the evaluator found it."""
    if set_name == "coco_person":
        return paths.yolo_dir("coco", root) / "person_val2017.json"
    return paths.yolo_dir(m["config"]["dataset"]["name"], root) / "val_coco.json"


def read_curves(run: Run, root: Path) -> Path | None:
    """ultralytics' per-epoch results.csv of the run's training, as floats."""
    import csv
    csv_path = paths.runs_dir(run.experiment, root) / "train" / "results.csv"
    if not csv_path.is_file():
        return None
    with reading(csv_path, "ultralytics' training curves", "it is written again by `make fit FRESH=1`"):
        rows = list(csv.DictReader(csv_path.open()))
        run.curves = [{k.strip(): float(v) for k, v in row.items() if k and v not in (None, "")} for row in rows]
    return csv_path


# ---------------------------------------------------------------------------------------- numbers
def stat(values: list) -> dict:
    """mean and sample std (ddof=1) with n; std is None for one value; mean None if any value is missing."""
    n = len(values)
    if n == 0 or any(v is None or (isinstance(v, float) and math.isnan(v)) for v in values):
        return {"mean": None, "std": None, "n": n, "values": values}
    return {"mean": statistics.fmean(values), "std": statistics.stdev(values) if n > 1 else None, "n": n,
            "values": values}


def groups(runs: list[Run], variants: dict, sets: list[str]) -> list[dict]:
    """One row per set x variant x format: every column's stat over the variant's runs."""
    rows = []
    for s in sets:
        for variant in variants:
            group = [r for r in runs if r.variant == variant]
            for fmt in sorted({f for r in group for f in r.metrics}, key=format_rank):
                have = [r for r in group if fmt in r.metrics and s in r.metrics[fmt]["sets"]]
                if not have:
                    continue
                row = {"set": s, "variant": variant, "format": fmt, "n": len(have),
                       "runs": [r.experiment for r in have]}
                for key, _, get, _ in COLUMNS:
                    row[key] = stat([get(r.metrics[fmt], s) for r in have])
                curves = [r.pr[(fmt, s)] for r in have if (fmt, s) in r.pr]
                if curves:  # the precision-recall figure's line: AP50 is its mean over the recall points
                    row["precision_at_recall"] = {"recall": [k / 100 for k in range(101)],
                                                  "mean": [statistics.fmean(p) for p in zip(*curves)]}
                rows.append(row)
    return rows


def conversion_steps(runs: list[Run], variants: dict, sets: list[str]) -> list[dict]:
    """Each step of the chain (a format against the one before it, paired run by run)."""
    rows = []
    for s in sets:
        for variant in variants:
            group = [r for r in runs if r.variant == variant]
            fmts = sorted({f for r in group for f in r.metrics if s in r.metrics[f]["sets"]}, key=format_rank)
            for before, after in zip(fmts, fmts[1:]):
                pairs = [r for r in group if all(f in r.metrics and s in r.metrics[f]["sets"] for f in (before, after))]
                if not pairs:
                    continue
                row = {"set": s, "variant": variant, "step": f"{before} → {after}", "from": before, "to": after,
                       "n": len(pairs)}
                for key, _, get, _ in STEP_COLUMNS:
                    deltas = []
                    for r in pairs:
                        a, b = get(r.metrics[before], s), get(r.metrics[after], s)
                        deltas.append(None if a is None or b is None else b - a)
                    row[key] = stat(deltas)
                rows.append(row)
    return rows


def cell(st: dict, digits: int, sign: bool = False, tex: bool = False) -> str:
    """`mean ± std` (`mean` alone for n = 1), as the tables show it; n/a where a value is undefined."""
    if st["mean"] is None:
        return "n/a"
    mean = round(st["mean"], digits) or 0.0  # no "-0.000" for a difference that rounds to nothing
    shown = f"{mean:{'+' if sign else ''}.{digits}f}"
    if st["std"] is not None:
        shown += f" \\pm {st['std']:.{digits}f}" if tex else f" ± {st['std']:.{digits}f}"
    return f"${shown}$" if tex else shown


# ---------------------------------------------------------------------------------------- precision-recall
def precision_recall(coco_file: Path, dets: list, cache: dict):
    """Precision at COCO's 101 recall points at IoU 0.5 (the curve AP50 integrates), all areas, 100
    detections per image; the same library the evaluator scored with (faster-coco-eval, else pycocotools)."""
    import contextlib
    import io

    import numpy as np
    try:
        from faster_coco_eval import COCO, COCOeval_faster as COCOeval
    except ImportError:
        from pycocotools.coco import COCO
        from pycocotools.cocoeval import COCOeval
    if not dets:
        return [0.0] * 101
    with contextlib.redirect_stdout(io.StringIO()):
        if coco_file not in cache:
            cache[coco_file] = COCO(str(coco_file))
        gt = cache[coco_file]
        e = COCOeval(gt, gt.loadRes(dets), "bbox")
        e.evaluate()
        e.accumulate()
    p = np.asarray(e.eval["precision"])[0, :, 0, 0, -1]  # [iou 0.5, recall, class, area all, maxDets 100]
    return [float(v) for v in np.where(p < 0, 0.0, p)]


def load_detections(m: dict, set_name: str, root: Path) -> list:
    path = root / m["sets"][set_name]["detections_file"]
    with reading(path, "COCO detections", "the stage that scored them writes them again with FORCE=1"):
        return json.loads(path.read_text())


# ---------------------------------------------------------------------------------------- writing
def build(name: str, kind: str, runs: list[Run], variants: dict, notes: list[str], root: Path, examples: int,
          score: float, inputs: list[Path]) -> dict:
    from . import figures

    check_settings(f"{kind} '{name}'", runs)
    sets = sorted({s for r in runs for m in r.metrics.values() for s in m["sets"]},
                  key=lambda s: (s != "val", s))
    used = list(inputs) + check_inputs(runs, root, sets)
    for r in runs:
        used += [p for p in [read_curves(r, root)] if p]
        used += [paths.artifacts_dir(r.experiment, root) / "metrics" / f"{f}.json" for f in r.metrics]
    variants = {v: o for v, o in variants.items() if any(r.variant == v for r in runs)}
    files.clean_stale_temps(paths.artifacts_dir(name, root), depth=1)

    cache = {}
    jobs = [(r, f, s) for r in runs for f, m in r.metrics.items() for s in sets if s in m["sets"]]
    for r, fmt, s in tqdm(jobs, desc=f"{STAGE}: precision-recall", unit="model", mininterval=0.5, leave=False):
        r.pr[(fmt, s)] = precision_recall(coco_truth(r.metrics[fmt], s, root),
                                          load_detections(r.metrics[fmt], s, root), cache)

    rows, steps = groups(runs, variants, sets), conversion_steps(runs, variants, sets)
    options = {"examples": examples, "score": score}
    fingerprint = {"inputs": {paths.rel(p, root): files.sha256_file(p) for p in sorted(set(used))},
                   "options": options}
    final = paths.artifacts_dir(name, root) / "report"
    old = files.read_json(final / "report.json") or {}
    with files.build_dir(final, same_inputs=old.get("fingerprint") == fingerprint) as b:
        fig_dir = b.path / "figures"
        fig_dir.mkdir()
        drawn, skipped = figures.draw_all(fig_dir, runs, variants, sets, rows, steps, root, examples, score)
        data = {"name": name, "kind": kind, "sets": sets, "variants": variants,
                "runs": [{"trial": r.trial, "experiment": r.experiment, "variant": r.variant, "seed": r.seed,
                          "formats": list(r.metrics)} for r in runs],
                "rows": rows, "conversion": steps, "notes": notes + skipped,
                "figures": [{"name": f, "caption": c} for f, c in drawn],
                "fingerprint": fingerprint}
        files.atomic_write_json(b.path / "report.json", data)
        files.atomic_write_text(b.path / "report.md", markdown(data, runs))
        files.atomic_write_text(b.path / "tables.tex", latex(data))
        files.atomic_write_text(b.path / "report.html", page(data, runs, fig_dir))
    if b.moved_aside:
        info(STAGE, f"the previous report (other inputs or options) was moved aside to "
                    f"{paths.rel(b.moved_aside, root)}")
    primary = sets[0]
    over = " (mean ± sample std over seeds)" if kind == "sweep" else ""
    print(table(["variant", "format", "n", "AP50", "MR-2 Reasonable %", "MB", "ms/image"],
                [[r["variant"], r["format"], r["n"], cell(r["AP50"], 3), cell(r["MR2_reasonable"], 2),
                  cell(r["model_mb"], 2), cell(r["latency_ms"], 1)] for r in rows if r["set"] == primary],
                title=f"\n{kind} {name}, set {primary}{over}"))
    info(STAGE, f"{paths.rel(final / 'report.html', root)} (also report.md, tables.tex, figures/)")
    return data


def runs_table(runs: list[Run]) -> tuple[list[str], list[list]]:
    headers = ["run", "variant", "seed", "formats", "epochs"]
    return headers, [[r.experiment, r.variant, r.seed, ", ".join(r.metrics), len(r.curves) or "n/a"] for r in runs]


def metrics_table(rows: list[dict], s: str, tex: bool = False):
    headers = ["variant", "format", "n"] + [h for _, h, _, _ in COLUMNS]
    body = [[r["variant"], r["format"], r["n"]] + [cell(r[k], d, tex=tex) for k, _, _, d in COLUMNS]
            for r in rows if r["set"] == s]
    return headers, body


def steps_table(steps: list[dict], s: str, tex: bool = False):
    headers = ["variant", "step", "n", "ΔAP50", "ΔMR-2 Reasonable (points)"]
    body = [[r["variant"], r["step"], r["n"]] + [cell(r[k], d, sign=True, tex=tex) for k, _, _, d in STEP_COLUMNS]
            for r in steps if r["set"] == s]
    return headers, body


LEGEND = ("Mean ± sample standard deviation over a variant's seeds (n runs; one run: the value alone). "
          "AP50, AP50-95: pycocotools COCO bbox AP. MR-2: the official CityPersons log-average miss rate, "
          "lower is better (n/a where it is not defined). MB: the model file. ms/image: read, letterbox, "
          "inference, decode and NMS on the machine that evaluated it (rknn: the toolkit's simulator on x86, "
          "not the board).")


def markdown(data: dict, runs: list[Run]) -> str:
    def md_table(headers, body):
        out = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
        return out + ["| " + " | ".join(str(c).replace("|", "\\|") for c in r) + " |" for r in body]

    out = [f"# Report: {data['kind']} {data['name']}", ""]
    if data["kind"] == "sweep":
        out += ["## Variants", ""] + md_table(["variant", "overrides"],
                                              [[v, " ".join(f"`{o}`" for o in ov) or "(the base)"]
                                               for v, ov in data["variants"].items()]) + [""]
    out += ["## Runs", ""] + md_table(*runs_table(runs)) + [""]
    for s in data["sets"]:
        out += [f"## Metrics on {s}", "", LEGEND, ""] + md_table(*metrics_table(data["rows"], s)) + [""]
        if any(r["set"] == s for r in data["conversion"]):
            out += [f"### Conversion cost on {s}", "",
                    "Each format against the one before it in pt → onnx → onnx-rknn-head → rknn (INT8), "
                    "paired run by run; MR-2 in percentage points (negative is better).", ""]
            out += md_table(*steps_table(data["conversion"], s)) + [""]
    out += ["## Figures", ""]
    for f in data["figures"]:
        out += [f"![{f['name']}](figures/{f['name']}.png)", "", f"*{f['caption']}*", ""]
    if data["notes"]:
        out += ["## Notes", ""] + [f"- {n}" for n in data["notes"]] + [""]
    return "\n".join(out)


TEX_SPECIAL = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_",
               "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}"}


def tex(text) -> str:
    text = "".join(TEX_SPECIAL.get(c, c) for c in str(text))
    return text.replace("→", r"$\to$").replace("Δ", r"$\Delta$").replace("±", r"$\pm$")


def latex(data: dict) -> str:
    label = re.sub(r"[^A-Za-z0-9.-]", "-", data["name"])
    out = [f"% {data['kind']} {data['name']}: generated by `make report`; needs \\usepackage{{booktabs}}", ""]

    def tabular(headers, body, caption, tag, top=""):
        # \footnotesize and narrower gaps: nine columns of `mean ± std` fit an article's text width
        return [r"\begin{table}[htbp]", r"\centering", r"\footnotesize", r"\setlength{\tabcolsep}{4pt}",
                rf"\caption{{{caption}}}", rf"\label{{tab:{label}-{tag}}}",
                rf"\begin{{tabular}}{{ll{'r' * (len(headers) - 2)}}}", r"\toprule", *([top] if top else []),
                " & ".join(tex(h) for h in headers) + r" \\", r"\midrule"] + \
               [" & ".join(c if c.startswith("$") else tex(c) for c in map(str, r)) + r" \\" for r in body] + \
               [r"\bottomrule", r"\end{tabular}", r"\end{table}", ""]

    # the metrics table's two heading rows: the column groups, then short names under them
    top = (r" & & & \multicolumn{2}{c}{COCO AP} & \multicolumn{2}{c}{MR$^{-2}$ (\%)} & & \\ "
           r"\cmidrule(lr){4-5} \cmidrule(lr){6-7}")
    short = {"AP50-95": "AP50:95", "MR-2 Reasonable %": "Reasonable", "MR-2 All %": "All"}
    for s in data["sets"]:
        headers, body = metrics_table(data["rows"], s, tex=True)
        spread = ("mean ± sample standard deviation over seeds (n runs)" if data["kind"] == "sweep" else
                  "one run")
        caption = tex(f"{data['name']} on {s}: {spread}. MR-2: the "
                      f"CityPersons log-average miss rate in %, lower is better. MB: model file; ms/image: on the "
                      f"machine that evaluated it.")
        out += tabular([short.get(h, h) for h in headers], body, caption, f"metrics-{s}", top)
        if any(r["set"] == s for r in data["conversion"]):
            headers, body = steps_table(data["conversion"], s, tex=True)
            caption = tex(f"{data['name']} on {s}: the cost of each conversion step, paired run by run "
                          f"(MR-2 in percentage points; n runs).")
            out += tabular(["variant", "step", "n", "ΔAP50", "ΔMR-2 Reasonable"], body, caption, f"conversion-{s}")
    return "\n".join(out)


PAGE_STYLE = """body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222}
table{border-collapse:collapse;margin:1em 0;font-size:.9em}th,td{padding:.3em .7em;border-bottom:1px solid #ccc}
th{text-align:left;border-bottom:2px solid #444}td{text-align:right}td:first-child,td:nth-child(2){text-align:left}
figure{margin:2em 0}img{max-width:100%}figcaption{font-size:.9em;color:#444}code{background:#f3f3f3}"""


def page(data: dict, runs: list[Run], fig_dir: Path) -> str:
    """One html file that needs nothing else: the figures are inside it as data URIs."""
    e = html.escape

    def html_table(headers, body):
        return ("<table><tr>" + "".join(f"<th>{e(str(h))}</th>" for h in headers) + "</tr>"
                + "".join("<tr>" + "".join(f"<td>{e(str(c))}</td>" for c in r) + "</tr>" for r in body) + "</table>")

    title = f"Report: {data['kind']} {data['name']}"
    out = [f"<!DOCTYPE html><html lang=en><head><meta charset=utf-8><title>{e(title)}</title>",
           f"<style>{PAGE_STYLE}</style></head><body><h1>{e(title)}</h1>"]
    if data["kind"] == "sweep":
        variants = [[v, " ".join(ov) or "(the base)"] for v, ov in data["variants"].items()]
        out += ["<h2>Variants</h2>", html_table(["variant", "overrides"], variants)]
    out += ["<h2>Runs</h2>", html_table(*runs_table(runs))]
    for s in data["sets"]:
        out += [f"<h2>Metrics on {e(s)}</h2><p>{e(LEGEND)}</p>", html_table(*metrics_table(data["rows"], s))]
        if any(r["set"] == s for r in data["conversion"]):
            out += [f"<h3>Conversion cost on {e(s)}</h3><p>Each format against the one before it in pt → onnx → "
                    "onnx-rknn-head → rknn (INT8), paired run by run; MR-2 in percentage points.</p>",
                    html_table(*steps_table(data["conversion"], s))]
    out += ["<h2>Figures</h2>"]
    for f in data["figures"]:
        png = base64.b64encode((fig_dir / f"{f['name']}.png").read_bytes()).decode()
        out += [f"<figure id=\"{e(f['name'])}\"><img alt=\"{e(f['name'])}\" src=\"data:image/png;base64,{png}\">"
                f"<figcaption>{e(f['caption'])}</figcaption></figure>"]
    if data["notes"]:
        out += ["<h2>Notes</h2><ul>"] + [f"<li>{e(n)}</li>" for n in data["notes"]] + ["</ul>"]
    return "\n".join(out + ["</body></html>", ""])
