"""make report: tables (md, LaTeX), figures (pdf, png) and one self-contained html page over an
experiment or a sweep; its numbers against a recomputation of our own from the trials' metrics."""
import html
import json
import math
import os
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from tests.helpers import ROOT, copy_dataset, make, one_error, require, run_module

DEMO = str(ROOT / "configs" / "demo.yaml")
FIGURES = {"training", "mr_fppi", "precision_recall", "conversion", "size_latency", "examples"}
# The table columns and, independently of the report's code, how to read each from a metrics json.
COLUMNS = {
    "AP50": (3, lambda m: m["sets"]["val"]["coco"]["AP50"]),
    "AP50-95": (3, lambda m: m["sets"]["val"]["coco"]["AP"]),
    "MR-2 Reasonable %": (2, lambda m: 100 * m["sets"]["val"]["miss_rate"]["Reasonable"]),
    "MR-2 All %": (2, lambda m: 100 * m["sets"]["val"]["miss_rate"]["All"]),
    "MB": (2, lambda m: m["model_bytes"] / 1e6),
    "ms/image": (1, lambda m: m["latency_ms_per_image"]["mean"]),
}


@pytest.fixture(scope="module")
def sweep_report(demo_sweep):
    """`make report SWEEP=demo-sweep` once, over the sweep's 2 variants x 2 seeds."""
    root, name = demo_sweep.root, demo_sweep.name
    proc = make("report", f"SWEEP={name}", root=root, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return root, name, root / "artifacts" / name / "report", proc


def expected_groups(root: Path, name: str) -> dict:
    """(variant, format) -> {column: [value per seed]}, straight from sweep.json and the metrics files."""
    sweep = json.loads((root / "artifacts" / name / "sweep.json").read_text())
    out = {}
    for t in sweep["trials"]:
        if t["status"] not in ("done", "skipped"):
            continue
        for path in sorted((root / "artifacts" / t["experiment"] / "metrics").glob("*.json")):
            m = json.loads(path.read_text())
            if "format" not in m or "sets" not in m:
                continue
            group = out.setdefault((t["variant"], m["format"]), {c: [] for c in COLUMNS})
            for column, (_, get) in COLUMNS.items():
                group[column].append(get(m))
    return out


def md_rows(md: str, heading: str) -> list[dict]:
    """The rows of the markdown table under `heading`, as {column: cell}."""
    lines = md.split(f"## {heading}\n", 1)[1].splitlines()
    table = [line for line in lines[next(i for i, line in enumerate(lines) if line.startswith("|")):]]
    table = table[:next((i for i, line in enumerate(table) if not line.startswith("|")), len(table))]
    headers = [c.strip() for c in table[0].strip("|").split("|")]
    return [dict(zip(headers, (c.strip() for c in line.strip("|").split("|")))) for line in table[2:]]


def assert_cell(shown: str, values: list, digits: int, where: str) -> None:
    """A cell is `mean ± sample std` of the values (the mean alone for one value), at `digits` digits."""
    mean = float(np.mean(values))
    half = 0.5 * 10 ** -digits + 1e-9
    if len(values) == 1:
        assert "±" not in shown and abs(float(shown) - mean) <= half, (where, shown, values)
        return
    got_mean, got_std = (float(x) for x in shown.split("±"))
    assert abs(got_mean - mean) <= half, (where, shown, values)
    assert abs(got_std - float(np.std(values, ddof=1))) <= half, (where, shown, values)


# ------------------------------------------------------------------------------ the sweep's report
@pytest.mark.slow  # a trained sweep
def test_sweep_report_numbers_are_the_mean_and_sample_std_over_seeds(sweep_report):
    root, name, report, proc = sweep_report
    expected = expected_groups(root, name)
    assert len(expected) == 2 * 4 and all(len(v["AP50"]) == 2 for v in expected.values())  # 2 seeds per variant
    data = json.loads((report / "report.json").read_text())
    rows = {(r["variant"], r["format"]): r for r in data["rows"] if r["set"] == "val"}
    assert set(rows) == set(expected)
    keys = {"AP50": "AP50", "AP50-95": "AP", "MR-2 Reasonable %": "MR2_reasonable", "MR-2 All %": "MR2_all",
            "MB": "model_mb", "ms/image": "latency_ms"}
    for group, values in expected.items():
        assert rows[group]["n"] == len(values["AP50"])
        for column, key in keys.items():
            got = rows[group][key]
            assert got["n"] == len(values[column])
            assert math.isclose(got["mean"], float(np.mean(values[column])), rel_tol=1e-9, abs_tol=1e-12), group
            assert math.isclose(got["std"], float(np.std(values[column], ddof=1)), rel_tol=1e-9, abs_tol=1e-12)
    # the precision-recall figure's line is the curve AP50 averages: its mean is the evaluator's AP50
    for group, values in expected.items():
        curve = rows[group]["precision_at_recall"]["mean"]
        assert len(curve) == 101 and math.isclose(float(np.mean(curve)), float(np.mean(values["AP50"])),
                                                  abs_tol=1e-9), group
    # what people read: the markdown table and the LaTeX one
    shown = {(r["variant"], r["format"]): r for r in md_rows((report / "report.md").read_text(), "Metrics on val")}
    assert set(shown) == set(expected)
    tex = (report / "tables.tex").read_text()
    for group, values in expected.items():
        assert int(shown[group]["n"]) == len(values["AP50"])
        for column, (digits, _) in COLUMNS.items():
            assert_cell(shown[group][column], values[column], digits, f"report.md {group} {column}")
        ap50 = f"${np.mean(values['AP50']):.3f} \\pm {np.std(values['AP50'], ddof=1):.3f}$"
        row = f"{group[0]} & {group[1]} & {len(values['AP50'])} & {ap50}"
        assert re.search(rf"^{re.escape(row)}", tex, re.M), (row, tex)
    # the terminal's summary table ends the run, one row per variant x format
    tail = proc.stdout[proc.stdout.rindex("variant"):]
    assert all(re.search(rf"^{re.escape(v)}\s+{re.escape(f)}\s+2\s", tail, re.M) for v, f in expected)


@pytest.mark.slow  # a trained sweep
def test_conversion_cost_is_paired_seed_by_seed(sweep_report):
    root, name, report, _ = sweep_report
    sweep = json.loads((root / "artifacts" / name / "sweep.json").read_text())
    data = json.loads((report / "report.json").read_text())
    steps = {(r["variant"], r["from"], r["to"]): r for r in data["conversion"] if r["set"] == "val"}
    chain = ["pt", "onnx", "onnx-rknn-head", "rknn"]
    assert len(sweep["variants"]) == 2, sweep["variants"]
    assert set(steps) == {(v, a, b) for v in sweep["variants"] for a, b in zip(chain, chain[1:])}, sorted(steps)
    compared = 0
    for variant in sweep["variants"]:
        trials = [t for t in sweep["trials"] if t["variant"] == variant and t["status"] in ("done", "skipped")]
        assert len(trials) == 2, (variant, sweep["trials"])  # both seeds, after the rerun
        for before, after in zip(chain, chain[1:]):
            deltas = []
            for t in trials:
                metrics = root / "artifacts" / t["experiment"] / "metrics"
                a, b = (json.loads((metrics / f"{f}.json").read_text()) for f in (before, after))
                deltas.append(b["sets"]["val"]["coco"]["AP50"] - a["sets"]["val"]["coco"]["AP50"])
            got = steps[(variant, before, after)]["AP50"]
            assert got["n"] == len(trials)
            assert math.isclose(got["mean"], float(np.mean(deltas)), abs_tol=1e-12)
            assert math.isclose(got["std"], float(np.std(deltas, ddof=1)), rel_tol=1e-9, abs_tol=1e-12)
            compared += 1
    assert compared == 2 * 3  # 2 variants x 3 conversion steps


@pytest.mark.slow  # a trained sweep
def test_every_figure_is_written_as_pdf_and_png(sweep_report):
    from PIL import Image
    _, _, report, _ = sweep_report
    data = json.loads((report / "report.json").read_text())
    assert {f["name"] for f in data["figures"]} == FIGURES, data["notes"]
    for name in FIGURES:
        assert (report / "figures" / f"{name}.pdf").read_bytes()[:5] == b"%PDF-"
        with Image.open(report / "figures" / f"{name}.png") as png:
            assert png.format == "PNG" and png.width > 600 and png.height > 300
        assert f"](figures/{name}.png)" in (report / "report.md").read_text()


@pytest.mark.slow  # a trained sweep
def test_tables_tex_compiles_with_pdflatex_beside_the_figures(sweep_report, tmp_path):
    require(shutil.which("pdflatex"), "pdflatex (Debian's texlive-latex-base, -recommended; `make test` installs them)")
    _, _, report, _ = sweep_report
    shutil.copytree(report, tmp_path / "report")
    figures = "\n".join(rf"\includegraphics[width=\linewidth]{{figures/{n}.pdf}}" for n in sorted(FIGURES))
    (tmp_path / "report" / "thesis.tex").write_text(
        "\\documentclass{article}\n\\usepackage{booktabs}\n\\usepackage{graphicx}\n\\begin{document}\n"
        f"\\input{{tables.tex}}\n{figures}\n\\end{{document}}\n")
    proc = subprocess.run(["pdflatex", "-interaction=nonstopmode", "-halt-on-error", "thesis.tex"],
                          cwd=tmp_path / "report", capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:]
    assert (tmp_path / "report" / "thesis.pdf").stat().st_size > 10_000


@pytest.mark.slow  # a trained sweep
def test_the_html_page_shows_every_figure_in_a_real_browser(sweep_report, tmp_path):
    chromium = next((c for c in ("/usr/bin/chromium", "/usr/bin/chromium-browser") if os.path.exists(c)), None)
    require(chromium, "Debian's chromium, to open the page (`make test` installs it)")
    _, _, report, _ = sweep_report
    page = (report / "report.html").read_text()
    sources = re.findall(r'<img[^>]*\ssrc="([^"]*)"', page)
    assert len(sources) == len(FIGURES) and all(s.startswith("data:image/png;base64,") for s in sources)
    # A copy alone in an empty folder, with a script that counts the pictures the browser decoded.
    counter = ("<script>window.addEventListener('load', () => { const im = [...document.images]; "
               "document.body.dataset.loaded = im.filter(i => i.complete && i.naturalWidth > 0).length + '/' "
               "+ im.length; });</script>")
    (tmp_path / "alone").mkdir()
    copy = tmp_path / "alone" / "report.html"
    copy.write_text(page.replace("</body>", counter + "</body>"))
    dom = subprocess.run([chromium, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
                          "--disable-background-networking", "--disable-component-update", "--disable-sync",
                          f"--user-data-dir={tmp_path / 'profile'}", "--virtual-time-budget=20000", "--dump-dom",
                          copy.as_uri()], capture_output=True, text=True, timeout=180).stdout
    loaded = re.search(r'data-loaded="(\d+)/(\d+)"', dom)
    assert loaded, dom[:1000]
    assert loaded.group(1) == loaded.group(2) == str(len(FIGURES))


@pytest.mark.slow  # a trained sweep
def test_runs_evaluated_with_other_settings_are_not_averaged(sweep_report, tmp_path):
    """A trial of the sweep evaluated again at another input size: the report names the key and stops."""
    root, name, _, _ = sweep_report
    copy = tmp_path / "root"
    copy_dataset(root, copy)
    sweep = json.loads((root / "artifacts" / name / "sweep.json").read_text())
    for t in sweep["trials"]:  # hard links: every stage replaces files by renaming, never in place
        if (root / "artifacts" / t["experiment"]).is_dir():
            shutil.copytree(root / "artifacts" / t["experiment"], copy / "artifacts" / t["experiment"],
                            copy_function=os.link)
    (copy / "artifacts" / name).mkdir()
    shutil.copy(root / "artifacts" / name / "sweep.json", copy / "artifacts" / name)
    odd = [t for t in sweep["trials"] if t["status"] in ("done", "skipped")][-1]
    base = str(ROOT / "configs" / f"{sweep['base']}.yaml")
    proc = run_module("evaluate", ["--config", base, "--experiment", odd["experiment"], *odd["overrides"],
                                   "evaluate.format=pt", "evaluate.imgsz=288"], copy)
    assert proc.returncode == 0, proc.stderr[-2000:]
    proc = run_module("report", ["--sweep", name], copy)
    line = one_error(proc)
    assert "evaluate.imgsz" in line and odd["experiment"] in line and f"'{odd['variant']}'" in line, line
    assert not (copy / "artifacts" / name / "report").exists()


# ------------------------------------------------------------------------------ one experiment
@pytest.mark.slow  # a trained sweep
def test_one_run_is_a_valid_report_and_a_second_run_replaces_it(demo_sweep):
    root, name = demo_sweep.root, demo_sweep.name
    sweep = json.loads((root / "artifacts" / name / "sweep.json").read_text())
    exp = sweep["trials"][0]["experiment"]
    for _ in range(2):
        proc = run_module("report", ["--config", DEMO, "--experiment", exp, "--examples", "2"], root)
        assert proc.returncode == 0, proc.stderr[-3000:]
    report = root / "artifacts" / exp / "report"
    assert not list(report.parent.glob("report.old-*"))  # same inputs: replaced, no copy piles up
    shown = {r["format"]: r for r in md_rows((report / "report.md").read_text(), "Metrics on val")}
    compared = set()
    for path in (root / "artifacts" / exp / "metrics").glob("*.json"):
        m = json.loads(path.read_text())
        if "format" not in m or "sets" not in m:
            continue
        assert shown[m["format"]]["n"] == "1"
        for column, (digits, get) in COLUMNS.items():
            assert_cell(shown[m["format"]][column], [get(m)], digits, f"{m['format']} {column}")
        compared.add(m["format"])
    assert compared == set(shown) == {"pt", "onnx", "onnx-rknn-head", "rknn"}, (compared, set(shown))
    assert not re.search(r"\$[-+0-9.]+ \\pm", (report / "tables.tex").read_text())  # no cell shows a spread


# ------------------------------------------------------------------------------ bad input (no training)
def test_an_experiment_without_runs_is_one_line_and_writes_nothing(tmp_path):
    proc = run_module("report", ["--config", DEMO, "--experiment", "never-trained"], tmp_path)
    line = one_error(proc)
    assert "never-trained" in line and "no evaluated run" in line and "make train" in line, line
    assert not (tmp_path / "artifacts" / "never-trained" / "report").exists()


def test_an_unknown_sweep_is_one_line_naming_the_known_ones(tmp_path):
    known = tmp_path / "artifacts" / "other-sweep"
    known.mkdir(parents=True)
    (known / "sweep.json").write_text(json.dumps({"sweep": "other-sweep", "variants": {}, "trials": []}))
    proc = run_module("report", ["--sweep", "no-such-sweep"], tmp_path)
    line = one_error(proc)
    assert "unknown sweep 'no-such-sweep'" in line and "make sweep SWEEP=no-such-sweep" in line, line
    assert "other-sweep" in line
    assert not (tmp_path / "artifacts" / "no-such-sweep").exists()


def test_a_sweep_whose_trials_all_failed_is_one_line(tmp_path):
    folder = tmp_path / "artifacts" / "broken"
    folder.mkdir(parents=True)
    trial = {"trial": "a-s0", "experiment": "broken-a-s0", "variant": "a", "seed": 0, "overrides": [],
             "status": "failed", "stage": "fit", "exit": 2, "seconds": 1.0, "log": "artifacts/broken/logs/a-s0.log"}
    (folder / "sweep.json").write_text(json.dumps({"sweep": "broken", "base": "demo", "seeds": [0],
                                                   "variants": {"a": []}, "trials": [trial]}))
    proc = run_module("report", ["--sweep", "broken"], tmp_path)
    line = one_error(proc, "report")
    assert "sweep 'broken' has no evaluated trial" in line, line
    assert "a-s0 failed at stage 'fit'" in proc.stderr  # said before the error, as a warning
    assert not (folder / "report").exists()


# ------------------------------------------------------------------------------ figures that read true (no training)
def spread(values: list) -> dict:
    """A stat as the report stores it, computed here with numpy."""
    return {"mean": float(np.mean(values)), "std": float(np.std(values, ddof=1)) if len(values) > 1 else None,
            "n": len(values), "values": values}


def step_row(variant: str, before: str, after: str, ap50: list, mr2: list) -> dict:
    return {"set": "val", "variant": variant, "step": f"{before} → {after}", "from": before, "to": after,
            "n": len(ap50), "AP50": spread(ap50), "MR2_reasonable": spread(mr2)}


def bars_and_labels(ax) -> list[tuple]:
    """(bar centre, bar height, the label drawn at that centre) for every bar of a bar chart."""
    from matplotlib.text import Annotation
    labels = [t for t in ax.texts if isinstance(t, Annotation)]
    out = []
    for container in ax.containers:
        for bar in getattr(container, "patches", []):
            x = bar.get_x() + bar.get_width() / 2
            at = [t for t in labels if math.isclose(t.xy[0], x, abs_tol=1e-9)]
            assert len(at) == 1, (x, [t.get_text() for t in labels])
            out.append((x, bar.get_height(), at[0]))
    assert len(out) == len(labels)  # no label without its bar
    return out


def expected_label(values: list, digits: int) -> str:
    mean = float(np.mean(values))
    shown = f"{mean:+.{digits}f}"
    return shown if len(values) == 1 else f"{shown} ± {float(np.std(values, ddof=1)):.{digits}f}"


def test_the_conversion_figure_labels_every_bar_and_keeps_a_minimum_span():
    """A −0.0017 AP50 step is drawn on an axis of at least ±0.01 (±1 MR-2 point), not autoscaled into a
    cliff, and every bar carries its value as the conversion table shows it."""
    from services.report.figures import draw_conversion
    values = {("a", "pt", "onnx"): ([-0.0012, -0.0022], [0.31, 0.52]),
              ("a", "onnx", "onnx-rknn-head"): ([0.0004, 0.0001], [-0.12, -0.05]),
              ("b", "pt", "onnx"): ([-0.0007], [0.21])}
    steps = [step_row(v, a, b, ap, mr) for (v, a, b), (ap, mr) in values.items()]
    fig, _ = draw_conversion(steps, {"a": [], "b": []}, "val")
    ap_ax, mr_ax = fig.axes
    assert ap_ax.get_ylim() == pytest.approx((-0.01, 0.01))
    assert mr_ax.get_ylim() == pytest.approx((-1.0, 1.0))
    for ax, column, digits in ((ap_ax, 0, 3), (mr_ax, 1, 2)):
        shown = bars_and_labels(ax)
        assert len(shown) == len(values)
        expected = {round(float(np.mean(v[column])), 9): expected_label(v[column], digits) for v in values.values()}
        for _, height, label in shown:
            assert label.get_text().replace("\n", " ") == expected[round(height, 9)]


def test_the_conversion_figure_grows_past_the_minimum_span_for_a_real_loss():
    from services.report.figures import draw_conversion
    steps = [step_row("a", "onnx-rknn-head", "rknn", [-0.05, -0.062], [4.0, 5.5])]
    fig, _ = draw_conversion(steps, {"a": []}, "val")
    for ax, values in zip(fig.axes, ([-0.05, -0.062], [4.0, 5.5])):
        low, high = ax.get_ylim()
        whisker = [float(np.mean(values)) + k * float(np.std(values, ddof=1)) for k in (-1, 1)]
        assert low < min(whisker + [0]) and high > max(whisker + [0]), (ax.get_ylim(), whisker)
        [(_, _, label)] = bars_and_labels(ax)
        assert low < label.xy[1] < high
        assert label.get_text().replace("\n", " ") == expected_label(values, 3 if values[0] < 1 else 2)


def write_synthetic_sweep(root: Path, name: str = "syn") -> Path:
    """A sweep the report can read without a training: 2 variants x 2 seeds x 4 formats on 3 val images
    (random detections around the ground truth), training curves, and one failed trial."""
    import hashlib

    from PIL import Image
    rng = np.random.default_rng(0)
    yolo = root / "datasets" / "demo" / "yolo"
    (yolo / "val" / "images").mkdir(parents=True)
    images, boxes = [], []
    for i in range(3):
        Image.new("RGB", (320, 160), (60 * i, 80, 120)).save(yolo / "val" / "images" / f"im{i}.png")
        images.append({"id": i + 1, "file_name": f"im{i}.png", "im_name": f"im{i}.png", "width": 320, "height": 160})
        boxes += [{"id": len(boxes) + 1, "image_id": i + 1, "category_id": 1, "iscrowd": 0, "area": 2100.0,
                   "ignore": 0, "bbox": [float(rng.uniform(0, 280)), float(rng.uniform(0, 80)), 30.0, 70.0]}
                  for _ in range(2 + i)]
    truth = json.dumps({"images": images, "annotations": boxes, "categories": [{"id": 1, "name": "person"}]})
    for f in ("val_coco.json", "val_gt.json"):
        (yolo / f).write_text(truth)
    digest = hashlib.sha256(truth.encode()).hexdigest()
    trials = [{"trial": f"{v}-s{s}", "experiment": f"{name}-{v}-s{s}", "variant": v, "seed": s, "overrides": [],
               "status": "done"} for v in ("a", "b") for s in (0, 1)]
    for t in trials:
        metrics = root / "artifacts" / t["experiment"] / "metrics"
        metrics.mkdir(parents=True)
        for k, fmt in enumerate(["pt", "onnx", "onnx-rknn-head", "rknn"]):
            dets = [{"image_id": b["image_id"], "category_id": 1, "score": float(rng.uniform(0.2, 1)),
                     "bbox": [b["bbox"][0] + float(rng.uniform(-3, 3)), b["bbox"][1], 30.0, 70.0]}
                    for b in boxes if rng.random() < 0.85]
            (metrics / f"val-{fmt}.json").write_text(json.dumps(dets))
            curve = {"fppi": sorted(rng.uniform(0.001, 5, 20).tolist()),
                     "miss_rate": sorted(rng.uniform(0.05, 0.9, 20).tolist(), reverse=True)}
            scored = {"coco": {"AP50": 0.6 - 0.001 * k + float(rng.uniform(0, 0.002)), "AP": 0.3},
                      "miss_rate": {"Reasonable": 0.4 + float(rng.uniform(0, 0.01)), "All": 0.6},
                      "mr_fppi_curves": {"Reasonable": curve},
                      "detections_file": str((metrics / f"val-{fmt}.json").relative_to(root))}
            (metrics / f"{fmt}.json").write_text(json.dumps({
                "format": fmt, "model_bytes": 4_000_000 if fmt == "rknn" else 10_600_000,
                "latency_ms_per_image": {"mean": 20.0 + 5 * k}, "sets": {"val": scored},
                "settings": {"imgsz_hw": [256, 256], "conf": 0.001, "iou": 0.7, "max_det": 300},
                "fingerprint": {"evaluator_version": 1, "ground_truth_sha256": {"val": [digest]}},
                "config": {"dataset": {"name": "demo"}, "train": {"seed": t["seed"]}}}))
        train = root / "runs" / t["experiment"] / "train"
        train.mkdir(parents=True)
        (train / "results.csv").write_text("epoch,train/box_loss,train/cls_loss,metrics/mAP50(B),metrics/mAP50-95(B)\n"
                                           + "".join(f"{e},{2 / e},{1 / e},{0.1 * e},{0.05 * e}\n" for e in (1, 2, 3)))
    trials.append({"trial": "a-s2", "experiment": f"{name}-a-s2", "variant": "a", "seed": 2, "overrides": [],
                   "status": "failed", "stage": "fit", "exit": 2, "log": f"artifacts/{name}/logs/a-s2.log"})
    (root / "artifacts" / name / "sweep.json").parent.mkdir(parents=True)
    (root / "artifacts" / name / "sweep.json").write_text(json.dumps(
        {"sweep": name, "base": "demo", "seeds": [0, 1], "variants": {"a": ["x=1"], "b": ["x=2"]}, "trials": trials}))
    return root


def test_every_figure_has_a_title_and_its_axes_say_their_units(tmp_path):
    from services.report import figures, runs, tables
    root = write_synthetic_sweep(tmp_path)
    loaded, variants, notes, _ = runs.sweep_runs("syn", root)
    assert len(loaded) == 4 and len(notes) == 1
    sets = runs.evaluated_sets(loaded)
    for r in loaded:
        runs.read_curves(r, root)
    tables.add_precision_recall_curves(loaded, sets, root)
    rows, steps = tables.metric_rows(loaded, variants, sets), tables.conversion_steps(loaded, variants, sets)
    drawn = {}
    for name, draw in figures.figure_makers(loaded, variants, sets, rows, steps, root, 2, 0.25):
        drawn[name], _ = draw()
    assert set(drawn) == FIGURES
    for name, fig in drawn.items():
        assert fig.get_suptitle(), name
        for ax in (ax for ax in fig.axes if ax.get_visible()):
            assert ax.get_title(), name
            if ax.axison:  # the example images are pictures, without axes
                assert ax.get_xlabel() and re.search(r"\(.+\)", ax.get_ylabel()), (name, ax.get_ylabel())
    xlabels = {name: [ax.get_xlabel() for ax in fig.axes if ax.get_visible()] for name, fig in drawn.items()}
    ylabels = {name: [ax.get_ylabel() for ax in fig.axes if ax.get_visible()] for name, fig in drawn.items()}
    assert xlabels["size_latency"] == ["model file (MB)", "latency (ms/image)"]
    assert ylabels["conversion"] == ["ΔAP50 (0 to 1 scale)", "ΔMR-2 Reasonable (percentage points)"]
    assert all(x.startswith("false positives per image") for x in xlabels["mr_fppi"])
    assert all(y == "precision (0 to 1)" for y in ylabels["precision_recall"])


def test_a_sweep_report_without_training_writes_every_output(tmp_path):
    """The whole report in-process on a synthetic sweep: md, LaTeX, json and the html page (from its
    template) say the same, and a second run with the same inputs replaces the first."""
    from services.report import report
    root = write_synthetic_sweep(tmp_path)
    for _ in range(2):
        data = report.run_sweep("syn", root=root, examples=1)
    folder = root / "artifacts" / "syn" / "report"
    assert not list(folder.parent.glob("report.old-*"))
    assert {f["name"] for f in data["figures"]} == FIGURES
    assert data["notes"] == ["trial a-s2 failed at stage 'fit' (exit 2); see artifacts/syn/logs/a-s2.log"]
    md, page = (folder / "report.md").read_text(), (folder / "report.html").read_text()
    shown = md_rows(md, "Metrics on val")
    assert {(r["variant"], r["format"]) for r in shown} == {(v, f) for v in "ab" for f in
                                                           ("pt", "onnx", "onnx-rknn-head", "rknn")}
    for row in shown:  # the page's table holds the same cells
        assert "".join(f"<td>{c}</td>" for c in row.values()) in html.unescape(page)
    assert page.startswith("<!DOCTYPE html>") and page.endswith("</body></html>\n")
    assert page.count('src="data:image/png;base64,') == len(FIGURES)
    assert "<li>trial a-s2 failed at stage &#39;fit&#39; (exit 2); see artifacts/syn/logs/a-s2.log</li>" in page
    assert re.search(r"^a & pt & 2 & \$0\.\d{3} \\pm 0\.\d{3}\$", (folder / "tables.tex").read_text(), re.M)
    assert json.loads((folder / "report.json").read_text())["rows"] == json.loads(json.dumps(data["rows"]))


def test_the_report_modules_import_each_other_one_way():
    """Loading runs, computing tables, drawing figures and writing the page: each module imports only
    the ones before it, so none needs a function-level import to dodge a cycle."""
    import ast
    allowed = {"runs": set(), "tables": {"runs"}, "figures": {"runs", "tables"}, "page": {"runs", "tables"},
               "report": {"runs", "tables", "figures", "page"}, "__main__": {"report"}}
    folder = ROOT / "services" / "report"
    assert {p.stem for p in folder.glob("*.py")} - {"__init__"} == set(allowed)
    for module, may in allowed.items():
        tree = ast.parse((folder / f"{module}.py").read_text())
        imported = set()
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.level == 1:
                imported |= {node.module} if node.module else {a.name for a in node.names}
            elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("services.report"):
                imported.add(node.module)
        assert imported <= may, (module, imported - may)
