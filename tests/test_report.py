"""make report: tables (md, LaTeX), figures (pdf, png) and one self-contained html page over an
experiment or a sweep; its numbers against a recomputation of our own from the trials' metrics."""
import json
import math
import os
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from conftest import ROOT, copy_dataset, make, one_error, run_module

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
    assert expected and all(len(v["AP50"]) == 2 for v in expected.values())  # 2 seeds per variant
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
    for variant in sweep["variants"]:
        trials = [t for t in sweep["trials"] if t["variant"] == variant and t["status"] in ("done", "skipped")]
        if not trials:
            continue
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
    if not shutil.which("pdflatex"):
        pytest.skip("pdflatex is needed (Debian's texlive-latex-base, -recommended; `make test` installs them)")
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
    if chromium is None:
        pytest.skip("Debian's chromium is needed to open the page; `make test` installs it")
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
    for path in (root / "artifacts" / exp / "metrics").glob("*.json"):
        m = json.loads(path.read_text())
        if "format" not in m or "sets" not in m:
            continue
        assert shown[m["format"]]["n"] == "1"
        for column, (digits, get) in COLUMNS.items():
            assert_cell(shown[m["format"]][column], [get(m)], digits, f"{m['format']} {column}")
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
    line = one_error(proc)
    assert "sweep 'broken' has no evaluated trial" in line, line
    assert "a-s0 failed at stage 'fit'" in proc.stderr  # said before the error, as a warning
    assert not (folder / "report").exists()
