"""The report's figures, each written as figures/<name>.pdf (vector, for LaTeX) and .png.

Every curve over several runs is drawn as the mean with a band of ± one sample standard deviation
(the band only where there are two runs or more)."""
import warnings
from pathlib import Path

import matplotlib
import matplotlib.patches
from matplotlib.lines import Line2D

matplotlib.use("Agg")  # no display, ever: the report runs in terminals, containers and CI
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from tqdm import tqdm  # noqa: E402

from services.common import files, paths  # noqa: E402

from .report import FLOAT_FOR_EXAMPLES, Run, coco_truth, format_rank, load_detections  # noqa: E402

MARKERS = {"pt": "o", "onnx": "s", "onnx-rknn-head": "D", "rknn": "^"}
STYLES = {"pt": "-", "onnx": "--", "onnx-rknn-head": "-.", "rknn": ":"}
TRAINING = [("train/box_loss", "box loss (train)"), ("train/cls_loss", "class loss (train)"),
            ("metrics/mAP50(B)", "mAP50 (selection split)"), ("metrics/mAP50-95(B)", "mAP50-95 (selection split)")]
EXAMPLE_WIDTH = 1024  # pixels: big frames are shrunk so the PDF stays small


class NoFigure(Exception):
    """A figure the runs have no data for; its message says so in the report's notes."""


def draw_all(folder: Path, runs: list[Run], variants: dict, sets: list[str], rows: list[dict], steps: list[dict],
             root: Path, examples: int, score: float) -> tuple[list, list]:
    """Every figure: ([(name, caption)] drawn, [note] for those left out)."""
    primary = sets[0]
    makers = [("training", lambda: training(runs, variants)),
              ("mr_fppi", lambda: mr_fppi(runs, variants, primary)),
              ("precision_recall", lambda: precision_recall(runs, variants, rows, primary)),
              ("conversion", lambda: conversion(steps, variants, primary)),
              ("size_latency", lambda: size_latency(rows, variants, primary)),
              ("examples", lambda: example_images(runs, root, examples, score))]
    drawn, skipped = [], []
    for name, make in tqdm(makers, desc="report: figures", unit="figure", mininterval=0.5, leave=False):
        try:
            fig, caption = make()
        except NoFigure as e:
            skipped.append(f"figure {name} left out: {e}")
            continue
        save(fig, folder, name)
        drawn.append((name, caption))
    return drawn, skipped


def save(fig, folder: Path, name: str) -> None:
    fig.tight_layout()
    # photographs compress badly: the example images at a lower resolution keep the page light
    dpi = 100 if name == "examples" else 150
    with files.atomic_path(folder / f"{name}.pdf") as tmp:
        fig.savefig(tmp, format="pdf", metadata={"CreationDate": None})  # same figure, same bytes
    with files.atomic_path(folder / f"{name}.png") as tmp:
        fig.savefig(tmp, format="png", dpi=dpi)
    plt.close(fig)


def colour(variants: dict, variant: str):
    return plt.get_cmap("tab10")(list(variants).index(variant) % 10)


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
    fig, axes = plt.subplots(rows, cols, figsize=(width * cols, height * rows), squeeze=False)
    for ax in axes.ravel()[count:]:
        ax.set_visible(False)
    return fig, axes.ravel()


def n_label(values: list) -> str:
    return f"n={len(values)}"


# ---------------------------------------------------------------------------------------- the figures
def training(runs: list[Run], variants: dict):
    with_curves = [r for r in runs if r.curves]
    if not with_curves:
        raise NoFigure("no training curves were found (runs/<experiment>/train/results.csv)")
    fig, axes = panels(len(TRAINING), most=2)
    for ax, (column, title) in zip(axes, TRAINING):
        for variant in variants:
            group = [r for r in with_curves if r.variant == variant]
            if not group:
                continue
            epochs = sorted({int(row["epoch"]) for r in group for row in r.curves})
            ys = np.full((len(group), len(epochs)), np.nan)
            for i, r in enumerate(group):
                for row in r.curves:
                    if column in row:
                        ys[i, epochs.index(int(row["epoch"]))] = row[column]
            mean_band(ax, epochs, ys, colour(variants, variant), f"{variant} ({n_label(group)})")
        ax.set(title=title, xlabel="epoch")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    caption = ("Training curves from ultralytics' results.csv: mean over each variant's seeds with a band of ± one "
               "sample standard deviation; the mAP is ultralytics' own, on the selection split that picks best.pt.")
    return fig, caption


FPPI_GRID = np.logspace(-3, 1, 241)


def curve_on_grid(fppi: list, miss: list) -> np.ndarray:
    """A run's MR-FPPI step curve read at FPPI_GRID: at each FPPI the miss rate of the last point not
    beyond it (1 before the first false positive), NaN past the run's last point (no detections left)."""
    fppi, miss = np.asarray(fppi, dtype=float), np.asarray(miss, dtype=float)
    if fppi.size == 0:
        return np.full(FPPI_GRID.shape, np.nan)
    k = np.searchsorted(fppi, FPPI_GRID, side="right") - 1
    out = np.where(k >= 0, miss[np.clip(k, 0, None)], 1.0)
    return np.where(FPPI_GRID > fppi[-1], np.nan, out)


def mr_fppi(runs: list[Run], variants: dict, set_name: str, setup: str = "Reasonable"):
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
            mean_band(ax, FPPI_GRID, ys, plt.get_cmap("tab10")(format_rank(fmt)[0] % 10),
                      f"{fmt}: MR-2 {np.mean(mr):.1f} % (n={len(mr)})", STYLES.get(fmt, "-"))
        ax.axvspan(1e-2, 1, color="0.9", zorder=0)
        ax.set(xscale="log", yscale="log", xlim=(1e-3, 10), ylim=(0.02, 1.05), title=f"{variant}",
               xlabel="false positives per image", ylabel=f"miss rate ({setup})")
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=7, loc="lower left")
    caption = (f"Miss rate against false positives per image on {set_name} ({setup} setup), per format; mean over "
               f"seeds with ± one std. MR-2 averages the miss rate at 9 points in the shaded range [0.01, 1].")
    return fig, caption


def precision_recall(runs: list[Run], variants: dict, rows: list[dict], set_name: str):
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
            mean_band(ax, recall, ys, plt.get_cmap("tab10")(format_rank(fmt)[0] % 10),
                      f"{fmt}: AP50 {ap:.3f} (n={len(ys)})", STYLES.get(fmt, "-"))
        ax.set(xlim=(0, 1), ylim=(0, 1.02), title=variant, xlabel="recall", ylabel="precision")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="lower left")
    caption = (f"Precision against recall at IoU 0.5 on {set_name} (the curve COCO's AP50 averages, 101 recall "
               f"points, up to 100 detections per image), per format; mean over seeds with ± one std.")
    return fig, caption


def conversion(steps: list[dict], variants: dict, set_name: str):
    steps = [s for s in steps if s["set"] == set_name]
    if not steps:
        raise NoFigure("no conversion step: each run has one format only")
    names = list(dict.fromkeys(s["step"] for s in sorted(steps, key=lambda s: format_rank(s["to"]))))
    shown = [v for v in variants if any(s["variant"] == v for s in steps)]
    fig, axes = plt.subplots(1, 2, figsize=(5 + 1.2 * len(names), 3.8))
    width = 0.8 / len(shown)
    for ax, (key, label) in zip(axes, [("AP50", "ΔAP50"), ("MR2_reasonable", "ΔMR-2 Reasonable (points)")]):
        for i, variant in enumerate(shown):
            for j, name in enumerate(names):
                s = next((s for s in steps if (s["variant"], s["step"]) == (variant, name)), None)
                if s is None or s[key]["mean"] is None:
                    continue
                ax.bar(j + (i - (len(shown) - 1) / 2) * width, s[key]["mean"], width, yerr=s[key]["std"] or 0,
                       color=colour(variants, variant), capsize=3, label=variant if j == 0 else None)
        ax.axhline(0, color="0.3", linewidth=0.8)
        ax.set_xticks(range(len(names)), names, rotation=15, fontsize=8)
        ax.set_ylabel(label)
        ax.grid(alpha=0.3, axis="y")
    if len(shown) > 1:
        axes[0].legend(fontsize=8)
    caption = (f"What each conversion step costs on {set_name}: each format against the one before it (pt → onnx → "
               f"onnx-rknn-head → rknn INT8), paired seed by seed; bars are the mean, whiskers ± one std. A lower "
               f"AP50 or a higher miss rate is a loss.")
    return fig, caption


def size_latency(rows: list[dict], variants: dict, set_name: str):
    rows = [r for r in rows if r["set"] == set_name]
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for ax, (key, label) in zip(axes, [("model_mb", "model file (MB)"), ("latency_ms", "latency (ms/image)")]):
        for r in rows:
            x, y = r[key], r["AP50"]
            if x["mean"] is None or y["mean"] is None:
                continue
            ax.errorbar(x["mean"], y["mean"], xerr=x["std"] or 0, yerr=y["std"] or 0, fmt=MARKERS.get(r["format"], "o"),
                        color=colour(variants, r["variant"]), capsize=3, markersize=7, alpha=0.85)
        ax.set(xlabel=label, ylabel=f"AP50 ({set_name})")
        ax.grid(alpha=0.3)
    # marker: the format; colour: the variant (labels beside the points would overlap: onnx and its
    # RKNN-head twin have the same size)
    fmts = sorted({r["format"] for r in rows}, key=format_rank)
    handles = [Line2D([], [], marker=MARKERS.get(f, "o"), linestyle="", color="0.3", label=f) for f in fmts]
    if len(variants) > 1:
        handles += [matplotlib.patches.Patch(color=colour(variants, v), label=v) for v in variants]
    axes[1].legend(handles=handles, fontsize=8, loc="best")
    caption = ("AP50 against the size of each format's model file and against its latency (read, letterbox, "
               "inference, decode, NMS on the machine that evaluated it; rknn: the toolkit's simulator on x86, "
               "not the board's NPU); mean ± one std over seeds.")
    return fig, caption


def example_images(runs: list[Run], root: Path, count: int, score: float):
    """The same val images with the float model's and the INT8 model's detections side by side."""
    import cv2
    if count == 0:
        raise NoFigure("no example images asked for (--examples 0)")
    run = runs[0]
    floats = [f for f in FLOAT_FOR_EXAMPLES if f in run.metrics and "val" in run.metrics[f]["sets"]]
    columns = floats[:1] + (["rknn"] if "rknn" in run.metrics and "val" in run.metrics["rknn"]["sets"] else [])
    if not columns:
        raise NoFigure(f"{run.experiment} has no model evaluated on the val set")
    m = run.metrics[columns[0]]
    yolo = coco_truth(m, "val", root).parent
    gt_file = yolo / "val_gt.json"
    gt = files.read_json(gt_file)
    if not gt:
        raise NoFigure(f"{paths.rel(gt_file, root)} cannot be read; `make dataset` builds it again")
    boxes = {}
    for a in gt["annotations"]:
        boxes.setdefault(a["image_id"], []).append(a)
    # the busiest scenes show the most: most people who count (not ignored), then the image id
    chosen = sorted(gt["images"], key=lambda im: (-sum(not a.get("ignore") for a in boxes.get(im["id"], [])),
                                                  im["id"]))[:count]
    dets = {f: load_detections(run.metrics[f], "val", root) for f in columns}
    first = cv2.imread(str(yolo / "val" / "images" / chosen[0]["im_name"]))
    aspect = first.shape[0] / first.shape[1] if first is not None else 0.5
    fig, axes = plt.subplots(len(chosen), len(columns), figsize=(6 * len(columns), 6 * aspect * len(chosen) + 0.8),
                             squeeze=False)
    for row, im in zip(axes, chosen):
        path = yolo / "val" / "images" / im["im_name"]
        image = cv2.imread(str(path))
        if image is None:
            raise NoFigure(f"{paths.rel(path, root)} cannot be read; `make dataset` builds it again")
        scale = min(1.0, EXAMPLE_WIDTH / image.shape[1])
        if scale < 1:
            image = cv2.resize(image, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA)
        for ax, fmt in zip(row, columns):
            ax.imshow(image[:, :, ::-1])
            for a in boxes.get(im["id"], []):
                x, y, w, h = (v * scale for v in a["bbox"])
                ax.add_patch(plt.Rectangle((x, y), w, h, fill=False, linestyle="--", linewidth=1,
                                           edgecolor="0.6" if a.get("ignore") else "lime"))
            shown = [d for d in dets[fmt] if d["image_id"] == im["id"] and d["score"] >= score]
            for d in shown:
                x, y, w, h = (v * scale for v in d["bbox"])
                ax.add_patch(plt.Rectangle((x, y), w, h, fill=False, linewidth=1.2, edgecolor="red"))
                ax.text(x, y - 2, f"{d['score']:.2f}", color="red", fontsize=6)
            kind = "INT8 (rknn, simulator)" if fmt == "rknn" else f"float ({fmt})"
            ax.set_title(f"{im['im_name']}: {kind}, {len(shown)} detection(s)", fontsize=8)
            ax.axis("off")
    sides = ("the float model left, the INT8 RKNN model right" if len(columns) == 2 else
             f"the {columns[0]} model only (no rknn metrics)")
    caption = (f"Val images of {run.experiment} (the scenes with the most people), {sides}: ground truth dashed "
               f"green (ignored regions grey), detections with score ≥ {score:g} in red.")
    return fig, caption
