"""Drawing the report's figures, each written as figures/<name>.pdf (vector, for LaTeX) and .png.

Every curve over several runs is drawn as the mean with a band of ± one sample standard deviation
(the band only where there are two runs or more). Every figure has a title, and every axis says its
unit. Figures are plain matplotlib Figure objects, not pyplot's: no global figure list to close, and
no backend to choose (the report runs in terminals, containers and CI, never on a display)."""
import warnings
from pathlib import Path

import matplotlib
import numpy as np
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Patch, Rectangle
from tqdm import tqdm

from services.common import files, paths

from .runs import STAGE, Run, coco_truth, format_rank, load_detections
from .tables import STEP_COLUMNS, board_latency, board_rows, cell, curve_on_grid, fppi_grid

FLOAT_FOR_EXAMPLES = ("onnx-rknn-head", "onnx", "pt")  # the INT8 model is built from the first
MARKERS = (("pt", "o"), ("onnx", "s"), ("onnx-rknn-head", "D"), ("rknn", "^"))
STYLES = (("pt", "-"), ("onnx", "--"), ("onnx-rknn-head", "-."), ("rknn", ":"))
# results.csv column, panel title, y axis
TRAINING = (("train/box_loss", "box loss (train)", "loss (unitless)"),
            ("train/cls_loss", "class loss (train)", "loss (unitless)"),
            ("metrics/mAP50(B)", "mAP50 (selection split)", "mAP50 (0 to 1)"),
            ("metrics/mAP50-95(B)", "mAP50-95 (selection split)", "mAP50-95 (0 to 1)"))
# The conversion figure's panels: key, y axis, and the least the axis shows either side of 0. A step
# that changes AP50 by 0.0015 is noise; drawn on an autoscaled axis it fills the panel like a cliff.
CONVERSION_PANELS = (("AP50", "AP50, higher is better", "ΔAP50 (0 to 1 scale)", 0.01),
                     ("MR2_reasonable", "MR-2 Reasonable, lower is better", "ΔMR-2 Reasonable (percentage points)",
                      1.0))
EXAMPLE_WIDTH = 1024  # pixels: big frames are shrunk so the PDF stays small


class NoFigure(Exception):
    """A figure the runs have no data for; its message says so in the report's notes."""


def figure_makers(runs: list[Run], variants: dict, sets: list[str], rows: list[dict], steps: list[dict],
                  root: Path, examples: int, score: float) -> list[tuple]:
    """[(name, a function drawing it: () -> (Figure, caption))], in the report's order."""
    primary = sets[0]
    return [("training", lambda: draw_training(runs, variants)),
            ("mr_fppi", lambda: draw_mr_fppi(runs, variants, primary)),
            ("precision_recall", lambda: draw_precision_recall(runs, variants, rows, primary)),
            ("conversion", lambda: draw_conversion(steps, variants, primary)),
            ("size_latency", lambda: draw_size_latency(rows, board_rows(runs, variants, primary), variants, primary)),
            ("examples", lambda: draw_examples(runs, root, examples, score))]


def draw_all(folder: Path, runs: list[Run], variants: dict, sets: list[str], rows: list[dict], steps: list[dict],
             root: Path, examples: int, score: float) -> tuple[list, list]:
    """Every figure: ([(name, caption)] drawn, [note] for those left out)."""
    makers = figure_makers(runs, variants, sets, rows, steps, root, examples, score)
    drawn, skipped = [], []
    for name, make in tqdm(makers, desc=f"{STAGE}: figures", unit="figure", mininterval=0.5, leave=False):
        try:
            fig, caption = make()
        except NoFigure as e:
            skipped.append(f"figure {name} left out: {e}")
            continue
        save(fig, folder, name)
        drawn.append((name, caption))
    return drawn, skipped


def save(fig: Figure, folder: Path, name: str) -> None:
    fig.tight_layout()
    # photographs compress badly: the example images at a lower resolution keep the page light
    dpi = 100 if name == "examples" else 150
    with files.atomic_path(folder / f"{name}.pdf") as tmp:
        fig.savefig(tmp, format="pdf", metadata={"CreationDate": None})  # same figure, same bytes
    with files.atomic_path(folder / f"{name}.png") as tmp:
        fig.savefig(tmp, format="png", dpi=dpi)


# ---------------------------------------------------------------------------------------- helpers
def tab10(i: int):
    return matplotlib.colormaps["tab10"](i % 10)


def colour(variants: dict, variant: str):
    return tab10(list(variants).index(variant))


def format_colour(fmt: str):
    return tab10(format_rank(fmt)[0])


def mean_band(ax, x, ys: np.ndarray, color, label: str, style: str = "-") -> None:
    """ys: one row per run (NaN where a run has no value): the mean line, and ± std where n >= 2."""
    n = np.sum(~np.isnan(ys), axis=0)
    with warnings.catch_warnings():  # columns without a value are NaN, and meant to be
        warnings.simplefilter("ignore", RuntimeWarning)
        mean = np.where(n > 0, np.nanmean(ys, axis=0), np.nan)
        std = np.where(n > 1, np.nanstd(ys, axis=0, ddof=1), np.nan)
    ax.plot(x, mean, style, color=color, label=label, linewidth=1.5)
    if np.any(n > 1):
        ax.fill_between(x, mean - std, mean + std, color=color, alpha=0.12, linewidth=0)


def panels(count: int, width: float = 4.2, height: float = 3.4, most: int = 3):
    cols = min(count, most)
    rows = -(-count // cols)
    fig = Figure(figsize=(width * cols, height * rows))
    axes = fig.subplots(rows, cols, squeeze=False)
    for ax in axes.ravel()[count:]:
        ax.set_visible(False)
    return fig, axes.ravel()


def n_label(values: list) -> str:
    return f"n={len(values)}"


# ---------------------------------------------------------------------------------------- the figures
def draw_training(runs: list[Run], variants: dict):
    with_curves = [r for r in runs if r.curves]
    if not with_curves:
        raise NoFigure("no training curves were found (runs/<experiment>/train/results.csv)")
    fig, axes = panels(len(TRAINING), most=2)
    for ax, (column, title, unit) in zip(axes, TRAINING):
        for variant in variants:
            group = [r for r in with_curves if r.variant == variant]
            if group:
                epochs, ys = training_curves(group, column)
                mean_band(ax, epochs, ys, colour(variants, variant), f"{variant} ({n_label(group)})")
        ax.set(title=title, xlabel="epoch", ylabel=unit)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.suptitle("Training curves (mean ± one std over seeds)")
    caption = ("Training curves from ultralytics' results.csv: mean over each variant's seeds with a band of ± one "
               "sample standard deviation; the mAP is ultralytics' own, on the selection split that picks best.pt.")
    return fig, caption


def training_curves(group: list[Run], column: str) -> tuple[list[int], np.ndarray]:
    """The epochs any run of the group has, and one row per run of `column` at them (NaN where missing)."""
    epochs = sorted({int(row["epoch"]) for r in group for row in r.curves})
    ys = np.full((len(group), len(epochs)), np.nan)
    for i, r in enumerate(group):
        for row in r.curves:
            if column in row:
                ys[i, epochs.index(int(row["epoch"]))] = row[column]
    return epochs, ys


def draw_mr_fppi(runs: list[Run], variants: dict, set_name: str, setup: str = "Reasonable"):
    have = [r for r in runs if any((m["sets"].get(set_name) or {}).get("mr_fppi_curves") for m in r.metrics.values())]
    if not have:
        raise NoFigure(f"no MR-FPPI curves on set {set_name} (the miss rate is defined on CityPersons' val only)")
    shown = [v for v in variants if any(r.variant == v for r in have)]
    fig, axes = panels(len(shown))
    for ax, variant in zip(axes, shown):
        group = [r for r in have if r.variant == variant]
        for fmt in sorted({f for r in group for f in r.metrics}, key=format_rank):
            scored = [r.metrics[fmt]["sets"][set_name] for r in group
                      if fmt in r.metrics and (r.metrics[fmt]["sets"].get(set_name) or {}).get("mr_fppi_curves")]
            if not scored:
                continue
            ys = np.array([curve_on_grid(s["mr_fppi_curves"][setup]["fppi"], s["mr_fppi_curves"][setup]["miss_rate"])
                           for s in scored])
            mr = [100 * s["miss_rate"][setup] for s in scored]
            mean_band(ax, fppi_grid(), ys, format_colour(fmt), f"{fmt}: MR-2 {np.mean(mr):.1f} % (n={len(mr)})",
                      dict(STYLES).get(fmt, "-"))
        ax.axvspan(1e-2, 1, color="0.9", zorder=0)
        ax.set(xscale="log", yscale="log", xlim=(1e-3, 10), ylim=(0.02, 1.05), title=f"{variant}",
               xlabel="false positives per image (log)", ylabel=f"miss rate, {setup} (0 to 1, log)")
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=7, loc="lower left")
    fig.suptitle(f"Miss rate against false positives per image on {set_name} ({setup})")
    caption = (f"Miss rate against false positives per image on {set_name} ({setup} setup), per format; mean over "
               f"seeds with ± one std. MR-2 averages the miss rate at 9 points in the shaded range [0.01, 1].")
    return fig, caption


def draw_precision_recall(runs: list[Run], variants: dict, rows: list[dict], set_name: str):
    fig, axes = panels(len(variants))
    recall = np.linspace(0, 1, 101)
    for ax, variant in zip(axes, variants):
        group = [r for r in runs if r.variant == variant]
        for fmt in sorted({f for r in group for f in r.metrics}, key=format_rank):
            ys = np.array([r.pr[(fmt, set_name)] for r in group if (fmt, set_name) in r.pr])
            if not len(ys):
                continue
            ap = next(x["AP50"]["mean"] for x in rows
                      if (x["variant"], x["format"], x["set"]) == (variant, fmt, set_name))
            mean_band(ax, recall, ys, format_colour(fmt), f"{fmt}: AP50 {ap:.3f} (n={len(ys)})",
                      dict(STYLES).get(fmt, "-"))
        ax.set(xlim=(0, 1), ylim=(0, 1.02), title=variant, xlabel="recall (0 to 1)", ylabel="precision (0 to 1)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="lower left")
    fig.suptitle(f"Precision against recall at IoU 0.5 on {set_name}")
    caption = (f"Precision against recall at IoU 0.5 on {set_name} (the curve COCO's AP50 averages, 101 recall "
               f"points, up to 100 detections per image), per format; mean over seeds with ± one std.")
    return fig, caption


def draw_conversion(steps: list[dict], variants: dict, set_name: str):
    steps = [s for s in steps if s["set"] == set_name]
    if not steps:
        raise NoFigure("no conversion step: each run has one format only")
    names = list(dict.fromkeys(s["step"] for s in sorted(steps, key=lambda s: format_rank(s["to"]))))
    shown = [v for v in variants if any(s["variant"] == v for s in steps)]
    fig = Figure(figsize=(5 + 1.2 * len(names), 3.8))
    axes = fig.subplots(1, 2)
    digits = {key: d for key, _, _, d in STEP_COLUMNS}
    for ax, (key, title, unit, span) in zip(axes, CONVERSION_PANELS):
        ends = []
        for i, variant in enumerate(shown):
            for j, name in enumerate(names):
                s = next((s for s in steps if (s["variant"], s["step"]) == (variant, name)), None)
                if s is None or s[key]["mean"] is None:
                    continue
                x = j + (i - (len(shown) - 1) / 2) * 0.8 / len(shown)
                ends.append(draw_step_bar(ax, x, 0.8 / len(shown), s[key], digits[key], colour(variants, variant),
                                          variant if j == 0 else None))
        keep_span(ax, ends, span)
        ax.axhline(0, color="0.3", linewidth=0.8)
        ax.set_xticks(range(len(names)), names, rotation=15, fontsize=8)
        ax.set(title=title, xlabel="conversion step", ylabel=unit)
        ax.grid(alpha=0.3, axis="y")
    if len(shown) > 1:
        axes[0].legend(fontsize=8)
    fig.suptitle(f"What each conversion step costs on {set_name} (AP50 down or MR-2 up is a loss)")
    caption = (f"What each conversion step costs on {set_name}: each format against the one before it (pt → onnx → "
               f"onnx-rknn-head → rknn INT8), paired seed by seed; bars are the mean, whiskers ± one std. A lower "
               f"AP50 or a higher miss rate is a loss.")
    return fig, caption


def draw_step_bar(ax, x: float, width: float, st: dict, digits: int, color, label) -> float:
    """One step's bar with its whisker and, beyond the whisker, its value as the table shows it (the
    spread on a second line: bars of several variants side by side are narrow). Returns where the
    whisker ends (the axis must hold it)."""
    std = st["std"] or 0
    ax.bar(x, st["mean"], width, yerr=std, color=color, capsize=3, label=label)
    up = st["mean"] >= 0
    end = st["mean"] + std if up else st["mean"] - std
    ax.annotate(cell(st, digits, sign=True).replace(" ± ", "\n± "), (x, end), xytext=(0, 2 if up else -2),
                textcoords="offset points", ha="center", va="bottom" if up else "top", fontsize=6.5, linespacing=1)
    return end


def keep_span(ax, ends: list[float], span: float) -> None:
    """Y limits that hold every whisker with room for its value, and at least ±span around 0."""
    lo, hi = min([0.0, *ends]), max([0.0, *ends])
    pad = 0.25 * (hi - lo)  # the printed values (two lines) sit beyond the whiskers
    ax.set_ylim(min(lo - pad, -span), max(hi + pad, span))


def draw_size_latency(rows: list[dict], board: list[dict], variants: dict, set_name: str):
    """AP50 against model size, and against latency: measured on the board where a board report
    says so (filled markers), else the evaluator's on x86 (hollow: an estimate, labelled so)."""
    rows = [r for r in rows if r["set"] == set_name]
    fig = Figure(figsize=(10, 4))
    size_ax, latency_ax = fig.subplots(1, 2)
    for r in rows:
        plot_point(size_ax, r["model_mb"], r, variants, filled=True)
        measured = board_latency(board, r["variant"], r["format"])
        plot_point(latency_ax, (measured or r)["latency_ms"], r, variants, filled=measured is not None)
    size_ax.set(title="size", xlabel="model file (MB)")
    latency_ax.set(title="latency: board, or x86 estimate (hollow)", xlabel="latency (ms/image)")
    for ax in (size_ax, latency_ax):
        ax.set(ylabel=f"AP50 on {set_name} (0 to 1)")
        ax.grid(alpha=0.3)
    latency_ax.legend(handles=legend_handles(rows, variants), fontsize=7, loc="best")
    fig.suptitle(f"AP50 against model size and latency on {set_name}")
    on_board = sorted({b["measured_on"] for b in board if b["on_board"]})
    measured = (f"filled markers: measured on the board ({', '.join(on_board)}; detect.py's read + pre-process + "
                f"NPU + post-process per frame, the whole frame on the fewest NPU cores measured)" if on_board else
                "no latency was measured on the board")
    caption = (f"AP50 against the size of each format's model file and against its latency; {measured}; hollow "
               f"markers: an estimate, the evaluator's latency on x86 (read, letterbox, inference, decode, NMS; "
               f"rknn: the toolkit's simulator, not the board's NPU). Mean ± one std over seeds.")
    return fig, caption


def plot_point(ax, x: dict, r: dict, variants: dict, filled: bool) -> None:
    """A variant x format's point at AP50 against `x` (a stat), with ± one std either way."""
    y = r["AP50"]
    if x["mean"] is None or y["mean"] is None:
        return
    color = colour(variants, r["variant"])
    ax.errorbar(x["mean"], y["mean"], xerr=x["std"] or 0, yerr=y["std"] or 0, fmt=dict(MARKERS).get(r["format"], "o"),
                color=color, markerfacecolor=color if filled else "none", capsize=3, markersize=7, alpha=0.85)


def legend_handles(rows: list[dict], variants: dict) -> list:
    """Marker: the format; colour: the variant; filled or hollow: measured on the board or estimated
    (labels beside the points would overlap: onnx and its RKNN-head twin have the same size)."""
    markers = dict(MARKERS)
    fmts = sorted({r["format"] for r in rows}, key=format_rank)
    handles = [Line2D([], [], marker=markers.get(f, "o"), linestyle="", color="0.3", label=f) for f in fmts]
    handles += [Line2D([], [], marker="o", linestyle="", color="0.3", label="measured on the board"),
                Line2D([], [], marker="o", linestyle="", color="0.3", markerfacecolor="none",
                       label="estimate (x86; rknn: simulator)")]
    if len(variants) > 1:
        handles += [Patch(color=colour(variants, v), label=v) for v in variants]
    return handles


# ---------------------------------------------------------------------------------------- example images
def draw_examples(runs: list[Run], root: Path, count: int, score: float):
    """The same val images with the float model's and the INT8 model's detections side by side."""
    if count == 0:
        raise NoFigure("no example images asked for (--examples 0)")
    run = runs[0]
    floats = [f for f in FLOAT_FOR_EXAMPLES if f in run.metrics and "val" in run.metrics[f]["sets"]]
    columns = floats[:1] + (["rknn"] if "rknn" in run.metrics and "val" in run.metrics["rknn"]["sets"] else [])
    if not columns:
        raise NoFigure(f"{run.experiment} has no model evaluated on the val set")
    yolo = coco_truth(run.metrics[columns[0]], "val", root).parent
    chosen, boxes = busiest_images(yolo, root, count)
    dets = {f: load_detections(run.metrics[f], "val", root) for f in columns}
    first = read_image(yolo / "val" / "images" / chosen[0]["im_name"], root, must=False)
    aspect = first.shape[0] / first.shape[1] if first is not None else 0.5
    fig = Figure(figsize=(6 * len(columns), 6 * aspect * len(chosen) + 0.8))
    axes = fig.subplots(len(chosen), len(columns), squeeze=False)
    for row, im in zip(axes, chosen):
        image = read_image(yolo / "val" / "images" / im["im_name"], root)
        scale = min(1.0, EXAMPLE_WIDTH / image.shape[1])
        if scale < 1:
            import cv2
            image = cv2.resize(image, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA)
        for ax, fmt in zip(row, columns):
            shown = [d for d in dets[fmt] if d["image_id"] == im["id"] and d["score"] >= score]
            draw_detections(ax, image, boxes.get(im["id"], []), shown, scale)
            kind = "INT8 (rknn, simulator)" if fmt == "rknn" else f"float ({fmt})"
            ax.set_title(f"{im['im_name']}: {kind}, {len(shown)} detection(s)", fontsize=8)
    sides = ("the float model left, the INT8 RKNN model right" if len(columns) == 2 else
             f"the {columns[0]} model only (no rknn metrics)")
    fig.suptitle(f"Float and INT8 detections on val images of {run.experiment}", fontsize=10)
    caption = (f"Val images of {run.experiment} (the scenes with the most people), {sides}: ground truth dashed "
               f"green (ignored regions grey), detections with score ≥ {score:g} in red.")
    return fig, caption


def busiest_images(yolo: Path, root: Path, count: int) -> tuple[list[dict], dict]:
    """The `count` val images with the most people who count (not ignored), then the image id; and
    image id -> its ground-truth boxes."""
    gt_file = yolo / "val_gt.json"
    gt = files.read_json(gt_file)
    if not gt:
        raise NoFigure(f"{paths.rel(gt_file, root)} cannot be read; `make dataset` builds it again")
    boxes = {}
    for a in gt["annotations"]:
        boxes.setdefault(a["image_id"], []).append(a)
    chosen = sorted(gt["images"], key=lambda im: (-sum(not a.get("ignore") for a in boxes.get(im["id"], [])),
                                                  im["id"]))[:count]
    return chosen, boxes


def read_image(path: Path, root: Path, must: bool = True):
    import cv2
    image = cv2.imread(str(path))
    if image is None and must:
        raise NoFigure(f"{paths.rel(path, root)} cannot be read; `make dataset` builds it again")
    return image


def draw_detections(ax, image, truth: list[dict], shown: list[dict], scale: float) -> None:
    """One image (BGR) with its ground truth dashed and the detections in red with their scores."""
    ax.imshow(image[:, :, ::-1])
    for a in truth:
        x, y, w, h = (v * scale for v in a["bbox"])
        ax.add_patch(Rectangle((x, y), w, h, fill=False, linestyle="--", linewidth=1,
                               edgecolor="0.6" if a.get("ignore") else "lime"))
    for d in shown:
        x, y, w, h = (v * scale for v in d["bbox"])
        ax.add_patch(Rectangle((x, y), w, h, fill=False, linewidth=1.2, edgecolor="red"))
        ax.text(x, y - 2, f"{d['score']:.2f}", color="red", fontsize=6)
    ax.axis("off")
