"""Computing the report's numbers: the statistics over a variant's runs (its seeds), the cost of each
conversion step, the precision-recall curves, and the cells of the tables as people read them.

Numbers are the mean and the sample standard deviation (ddof=1) over a variant's runs, with n; one
run is a valid report (n = 1, no std). Nothing here draws or writes a file."""
import contextlib
import io
import math
import statistics
from pathlib import Path

import numpy as np
from tqdm import tqdm

from .runs import BOARD_STAGES, STAGE, Run, coco_truth, format_rank, load_detections


# What the tables show per variant x format x set: key, heading, value from a metrics json, digits.
def _mr(setup):
    return lambda m, s: None if not m["sets"][s].get("miss_rate") else 100 * m["sets"][s]["miss_rate"][setup]


COLUMNS = (
    ("AP50", "AP50", lambda m, s: m["sets"][s]["coco"]["AP50"], 3),
    ("AP", "AP50-95", lambda m, s: m["sets"][s]["coco"]["AP"], 3),
    ("MR2_reasonable", "MR-2 Reasonable %", _mr("Reasonable"), 2),
    ("MR2_all", "MR-2 All %", _mr("All"), 2),
    ("model_mb", "MB", lambda m, s: m["model_bytes"] / 1e6, 2),
    ("latency_ms", "ms/image", lambda m, s: m["latency_ms_per_image"]["mean"], 1),
)
# The conversion cost: how much each step of pt -> onnx -> onnx-rknn-head -> rknn changes these.
STEP_COLUMNS = tuple(c for c in COLUMNS if c[0] in ("AP50", "MR2_reasonable"))


def stat(values: list) -> dict:
    """mean and sample std (ddof=1) with n; std is None for one value; mean None if any value is missing."""
    n = len(values)
    if n == 0 or any(v is None or (isinstance(v, float) and math.isnan(v)) for v in values):
        return {"mean": None, "std": None, "n": n, "values": values}
    return {"mean": statistics.fmean(values), "std": statistics.stdev(values) if n > 1 else None, "n": n,
            "values": values}


# ---------------------------------------------------------------------------------------- precision-recall
def precision_recall_curve(coco_file: Path, dets: list, cache: dict) -> list[float]:
    """Precision at COCO's 101 recall points at IoU 0.5 (the curve AP50 integrates), all areas, 100
    detections per image; the same library the evaluator scored with (faster-coco-eval, else pycocotools)."""
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


def add_precision_recall_curves(runs: list[Run], sets: list[str], root: Path) -> None:
    """Each run's precision-recall curve per format and set, into Run.pr (the figure and the rows read it)."""
    cache = {}  # the ground truth, parsed once however many models were scored against it
    jobs = [(r, f, s) for r in runs for f, m in r.metrics.items() for s in sets if s in m["sets"]]
    for r, fmt, s in tqdm(jobs, desc=f"{STAGE}: precision-recall", unit="model", mininterval=0.5, leave=False):
        r.pr[(fmt, s)] = precision_recall_curve(coco_truth(r.metrics[fmt], s, root),
                                                load_detections(r.metrics[fmt], s, root), cache)


# ---------------------------------------------------------------------------------------- rows
def metric_rows(runs: list[Run], variants: dict, sets: list[str]) -> list[dict]:
    """One row per set x variant x format: every column's stat over the variant's runs."""
    rows = []
    for s in sets:
        for variant in variants:
            group = [r for r in runs if r.variant == variant]
            for fmt in sorted({f for r in group for f in r.metrics}, key=format_rank):
                have = [r for r in group if fmt in r.metrics and s in r.metrics[fmt]["sets"]]
                if have:
                    rows.append(metric_row(have, variant, fmt, s))
    return rows


def metric_row(have: list[Run], variant: str, fmt: str, s: str) -> dict:
    settings = have[0].metrics[fmt]["settings"]  # the variant's runs agree on them (runs.check_settings)
    row = {"set": s, "variant": variant, "format": fmt, "n": len(have), "runs": [r.experiment for r in have],
           "tiles": settings.get("tiles", 1), "input_pixels_per_frame": settings.get("input_pixels_per_frame")}
    for key, _, get, _ in COLUMNS:
        row[key] = stat([get(r.metrics[fmt], s) for r in have])
    curves = [r.pr[(fmt, s)] for r in have if (fmt, s) in r.pr]
    if curves:  # the precision-recall figure's line: AP50 is its mean over the recall points
        row["precision_at_recall"] = {"recall": [k / 100 for k in range(101)],
                                      "mean": [statistics.fmean(p) for p in zip(*curves)]}
    return row


def conversion_steps(runs: list[Run], variants: dict, sets: list[str]) -> list[dict]:
    """Each step of the chain (a format against the one before it, paired run by run)."""
    rows = []
    for s in sets:
        for variant in variants:
            group = [r for r in runs if r.variant == variant]
            fmts = sorted({f for r in group for f in r.metrics if s in r.metrics[f]["sets"]}, key=format_rank)
            for before, after in zip(fmts, fmts[1:]):
                pairs = [r for r in group if all(f in r.metrics and s in r.metrics[f]["sets"] for f in (before, after))]
                if pairs:
                    rows.append(conversion_step(pairs, variant, before, after, s))
    return rows


def conversion_step(pairs: list[Run], variant: str, before: str, after: str, s: str) -> dict:
    row = {"set": s, "variant": variant, "step": f"{before} → {after}", "from": before, "to": after,
           "n": len(pairs)}
    for key, _, get, _ in STEP_COLUMNS:
        deltas = []
        for r in pairs:
            a, b = get(r.metrics[before], s), get(r.metrics[after], s)
            deltas.append(None if a is None or b is None else b - a)
        row[key] = stat(deltas)
    return row


# ---------------------------------------------------------------------------------------- board
def board_rows(runs: list[Run], variants: dict, s: str) -> list[dict]:
    """One row per variant x where it was measured x format x cores x tiles: each stage's mean latency
    per frame, their sum and the throughput, over the variant's board reports of that kind; beside the
    accuracy on set `s` of the runs measured."""
    def kind(b: dict) -> tuple:
        return b["measured_on"], b["format"], b["cores"], b["tiles"]

    rows = []
    for variant in variants:
        measured = [(r, b) for r in runs if r.variant == variant for b in r.board]
        for k in dict.fromkeys(kind(b) for _, b in measured):
            rows.append(board_row(variant, [(r, b) for r, b in measured if kind(b) == k], s))
    return rows


def board_row(variant: str, group: list[tuple], s: str) -> dict:
    first = group[0][1]
    fmt, measured = first["format"], [b for _, b in group]
    row = {"set": s, "variant": variant, "format": fmt, "measured_on": first["measured_on"],
           "on_board": first["on_board"], "cores": first["cores"], "contexts": first["contexts"],
           "tiles": first["tiles"], "n": len(group),
           "runs": [r.experiment for r, _ in group], "files": [b["file"] for b in measured],
           "frames": stat([b["frames"] for b in measured])}
    scored = list({r.experiment: r for r, _ in group}.values())  # a run measured twice counts once here
    for key, _, get, _ in STEP_COLUMNS:  # the accuracy beside the latency: AP50 and MR-2
        row[key] = stat([get(r.metrics[fmt], s) if fmt in r.metrics and s in r.metrics[fmt]["sets"] else None
                         for r in scored])
    for k in BOARD_STAGES:
        row[k] = stat([b["latency_ms"][k] for b in measured])
    # a frame's own time through the stages, without the waits between them: the latency the
    # accuracy-against-latency figure plots
    row["latency_ms"] = stat([None if None in b["latency_ms"].values() else sum(b["latency_ms"].values())
                              for b in measured])
    row["fps"] = stat([b["fps"] for b in measured])
    return row


def board_latency(board: list[dict], variant: str, fmt: str) -> dict | None:
    """The board row that gives a model its measured latency: measured on the board's NPU, the whole
    frame where measured so, on the fewest contexts (one core is the latency; all three are the
    throughput); None where none was."""
    measured = [b for b in board if b["on_board"] and (b["variant"], b["format"]) == (variant, fmt)
                and b["latency_ms"]["mean"] is not None]
    return min(measured, key=lambda b: (b["tiles"], b["contexts"]), default=None)


# ---------------------------------------------------------------------------------------- mr-fppi
def fppi_grid() -> np.ndarray:
    """The false positives per image at which every run's MR-FPPI curve is read before averaging."""
    return np.logspace(-3, 1, 241)


def curve_on_grid(fppi: list, miss: list) -> np.ndarray:
    """A run's MR-FPPI step curve read at fppi_grid(): at each FPPI the miss rate of the last point not
    beyond it (1 before the first false positive), NaN past the run's last point (no detections left)."""
    grid = fppi_grid()
    fppi, miss = np.asarray(fppi, dtype=float), np.asarray(miss, dtype=float)
    if fppi.size == 0:
        return np.full(grid.shape, np.nan)
    k = np.searchsorted(fppi, grid, side="right") - 1
    out = np.where(k >= 0, miss[np.clip(k, 0, None)], 1.0)
    return np.where(grid > fppi[-1], np.nan, out)


# ---------------------------------------------------------------------------------------- cells
def cell(st: dict, digits: int, sign: bool = False, tex: bool = False) -> str:
    """`mean ± std` (`mean` alone for n = 1), as the tables show it; n/a where a value is undefined."""
    if st["mean"] is None:
        return "n/a"
    mean = round(st["mean"], digits) or 0.0  # no "-0.000" for a difference that rounds to nothing
    shown = f"{mean:{'+' if sign else ''}.{digits}f}"
    if st["std"] is not None:
        shown += f" \\pm {st['std']:.{digits}f}" if tex else f" ± {st['std']:.{digits}f}"
    return f"${shown}$" if tex else shown


def runs_table(runs: list[Run]) -> tuple[list[str], list[list]]:
    headers = ["run", "variant", "seed", "formats", "epochs"]
    return headers, [[r.experiment, r.variant, r.seed, ", ".join(r.metrics), len(r.curves) or "n/a"] for r in runs]


def metrics_table(rows: list[dict], s: str, tex: bool = False) -> tuple[list[str], list[list]]:
    headers = ["variant", "format", "n"] + [h for _, h, _, _ in COLUMNS]
    body = [[r["variant"], format_label(r), r["n"]] + [cell(r[k], d, tex=tex) for k, _, _, d in COLUMNS]
            for r in rows if r["set"] == s]
    return headers, body


def format_label(row: dict) -> str:
    """The format, and the tiles when the frame was sliced (evaluate.tiles > 1): `rknn, 3 tiles`."""
    return row["format"] + (f", {row['tiles']} tiles" if row.get("tiles", 1) > 1 else "")


def steps_table(steps: list[dict], s: str, tex: bool = False) -> tuple[list[str], list[list]]:
    headers = ["variant", "step", "n", "ΔAP50", "ΔMR-2 Reasonable (points)"]
    body = [[r["variant"], r["step"], r["n"]] + [cell(r[k], d, sign=True, tex=tex) for k, _, _, d in STEP_COLUMNS]
            for r in steps if r["set"] == s]
    return headers, body


def board_table(rows: list[dict], tex: bool = False) -> tuple[list[str], list[list]]:
    headers = ["variant", "format", "measured on", "cores", "tiles", "n", "frames", "AP50", "MR-2 Reasonable %",
               "read ms", "pre ms", "NPU ms", "post ms", "sum ms", "frames/s"]
    digits = [3, 2] + [1] * 6
    keys = [k for k, _, _, _ in STEP_COLUMNS] + list(BOARD_STAGES) + ["latency_ms", "fps"]
    body = [[r["variant"], r["format"], r["measured_on"], r["cores"], r["tiles"], r["n"], cell(r["frames"], 0, tex=tex)]
            + [cell(r[k], d, tex=tex) for k, d in zip(keys, digits)] for r in rows]
    return headers, body


def summary_table(rows: list[dict], s: str) -> tuple[list[str], list[list]]:
    """The terminal's table at the end of a run: the main columns on the first set."""
    headers = ["variant", "format", "n", "AP50", "MR-2 Reasonable %", "MB", "ms/image"]
    return headers, [[r["variant"], r["format"], r["n"], cell(r["AP50"], 3), cell(r["MR2_reasonable"], 2),
                      cell(r["model_mb"], 2), cell(r["latency_ms"], 1)] for r in rows if r["set"] == s]
