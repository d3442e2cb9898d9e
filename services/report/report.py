"""The report over one experiment or a sweep: tables and figures from what the stages wrote.

artifacts/<NAME>/report/      NAME: the experiment, or the sweep
  report.md        the tables, the figures (figures/*.png) and notes
  report.html      the same as one self-contained page: figures embedded as data URIs
  tables.tex       booktabs tables (\\usepackage{booktabs}): one row per variant x format, mean ± std over seeds
  report.json      every number of the tables at full precision, and the files they were computed from
  figures/         *.pdf (vector, for LaTeX) and *.png of each figure

Numbers are the mean and the sample standard deviation (ddof=1) over a variant's runs (its seeds), with
n; one run is a valid report (n = 1, no std). Runs are averaged only when they were evaluated with the
same settings: the report refuses otherwise, naming the keys. The board's own measurements
(detect.py's board_report.json, copied back into artifacts/<exp>/board-reports/) are shown beside the
accuracy of the model they measured; one measured with another model than the experiment's bundle
holds is refused, naming both.

The steps, one module each, none importing a later one: runs.py loads and checks what the stages
wrote, tables.py computes the numbers, figures.py draws, page.py writes md, LaTeX and html. This
module runs them in order and owns the report folder.
"""
from pathlib import Path

from services.common import files, paths
from services.common.log import info, table

from . import page, tables
from .runs import STAGE, Run, check_inputs, check_settings, evaluated_sets, experiment_run, metrics_files, \
    read_board_reports, read_curves, sweep_runs


def run_experiment(cfg: dict, root: Path = paths.ROOT, examples: int = 3, score: float = 0.25) -> dict:
    run = experiment_run(cfg, root)
    exp = run.experiment
    return build(exp, "experiment", [run], {exp: []}, [], root, examples, score, inputs=[])


def run_sweep(name: str, root: Path = paths.ROOT, examples: int = 3, score: float = 0.25) -> dict:
    runs, variants, notes, sweep_file = sweep_runs(name, root)
    return build(name, "sweep", runs, variants, notes, root, examples, score, inputs=[sweep_file])


def build(name: str, kind: str, runs: list[Run], variants: dict, notes: list[str], root: Path, examples: int,
          score: float, inputs: list[Path]) -> dict:
    check_settings(f"{kind} '{name}'", runs)
    sets = evaluated_sets(runs)
    used = input_files(runs, root, sets, inputs)
    variants = {v: o for v, o in variants.items() if any(r.variant == v for r in runs)}
    files.clean_stale_temps(paths.artifacts_dir(name, root), depth=1)

    tables.add_precision_recall_curves(runs, sets, root)
    rows, steps = tables.metric_rows(runs, variants, sets), tables.conversion_steps(runs, variants, sets)
    board = tables.board_rows(runs, variants, sets[0])
    fingerprint = {"inputs": {paths.rel(p, root): files.sha256_file(p) for p in sorted(set(used))},
                   "options": {"examples": examples, "score": score}}
    final = paths.artifacts_dir(name, root) / "report"
    old = files.read_json(final / "report.json") or {}
    with files.build_dir(final, same_inputs=old.get("fingerprint") == fingerprint) as b:
        # here, not at the top: matplotlib takes half a second to import, which a report refused by
        # the checks above (one line, at once) does not need
        from . import figures
        fig_dir = b.path / "figures"
        fig_dir.mkdir()
        drawn, skipped = figures.draw_all(fig_dir, runs, variants, sets, rows, steps, root, examples, score)
        data = {"name": name, "kind": kind, "sets": sets, "variants": variants,
                "runs": [{"trial": r.trial, "experiment": r.experiment, "variant": r.variant, "seed": r.seed,
                          "formats": list(r.metrics)} for r in runs],
                "rows": rows, "conversion": steps, "board": board, "notes": notes + skipped,
                "figures": [{"name": f, "caption": c} for f, c in drawn],
                "fingerprint": fingerprint}
        write_pages(b.path, data, runs)
    if b.moved_aside:
        info(STAGE, f"the previous report (other inputs or options) was moved aside to "
                    f"{paths.rel(b.moved_aside, root)}")
    print_summary(data, rows)
    info(STAGE, f"{paths.rel(final / 'report.html', root)} (also report.md, tables.tex, figures/)")
    return data


def input_files(runs: list[Run], root: Path, sets: list[str], inputs: list[Path]) -> list[Path]:
    """Every file the report reads (its fingerprint), checked before any work is done; reads the
    training curves and the board reports into the runs on the way."""
    used = list(inputs) + check_inputs(runs, root, sets)
    for r in runs:
        used += [p for p in [read_curves(r, root)] if p]
        used += metrics_files(r, root)
        used += read_board_reports(r, root)
    return used


def write_pages(folder: Path, data: dict, runs: list[Run]) -> None:
    files.atomic_write_json(folder / "report.json", data)
    files.atomic_write_text(folder / "report.md", page.markdown(data, runs))
    files.atomic_write_text(folder / "tables.tex", page.latex(data))
    files.atomic_write_text(folder / "report.html", page.html_page(data, runs, folder / "figures"))


def print_summary(data: dict, rows: list[dict]) -> None:
    """The terminal's table that ends the run: one row per variant x format on the first set."""
    primary = data["sets"][0]
    over = " (mean ± sample std over seeds)" if data["kind"] == "sweep" else ""
    print(table(*tables.summary_table(rows, primary), title=f"\n{data['kind']} {data['name']}, set {primary}{over}"))
    if data["board"]:
        print(table(*tables.board_table(data["board"]), title="\nmeasured by detect.py (ms per frame, frames/s)"))
