"""make report with the board's own measurements: board_report.json files that the real board runtime
wrote (detect.py --backend onnx on this machine's CPU, in a bundle the convert stage's writer built
around a tiny real ONNX), copied into artifacts/<exp>/board-reports/, are read into the report beside
the model's accuracy and labelled with where they were measured (x86, never the board); a report of
another model is refused in one line naming both. No training: the accuracy comes from the synthetic
sweep of test_report.py, whose first trial's experiment the bundle is built for."""
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import cv2
import pytest

from tests.helpers import one_error, run_module
from services.common.layout import Experiment
from services.common.log import UserError
from tests.test_board_runtime import SIZE, street_images, tiny_onnx
from tests.test_report import md_rows, write_synthetic_sweep

SWEEP, EXP = "syn", "syn-a-s0"  # the synthetic sweep, and the trial whose model is measured
X86 = "x86 CPU, onnxruntime"


def build_bundle(root: Path, experiment: str, seed: int) -> Path:
    """artifacts/<experiment>/board/ as the convert stage writes it (board.write_bundle), around a tiny
    real ONNX (`seed`: another model). The .rknn is a placeholder: --backend onnx never reads it."""
    from services.convert import board
    models = Experiment(experiment, root).models
    tiny_onnx(models / f"{experiment}.rknn-head.onnx", seed=seed)
    rknn = models / f"{experiment}_int8_rk3588.rknn"
    rknn.write_text("placeholder: --backend onnx does not read it\n")
    cfg = {"experiment": experiment, "evaluate": {"iou": 0.7, "max_det": 300},
           "convert": {"platform": "rk3588", "dtype": "int8"}}
    return board.write_bundle(cfg, rknn, SIZE, "dfl", "2.3.2", root)


def measure(bundle: Path, images: Path, report: Path, cores: str) -> dict:
    """`python3 detect.py images/ --backend onnx --cores C --report R` in the bundle, as a user runs it."""
    proc = subprocess.run([sys.executable, str(bundle / "detect.py"), str(images), "--backend", "onnx", "--cores",
                           cores, "--quiet", "--report", str(report)], cwd=images.parent, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    return json.loads(report.read_text())


@pytest.fixture(scope="module")
def measured(tmp_path_factory) -> tuple[Path, Path, dict]:
    """The synthetic sweep, syn-a-s0's bundle, and its board reports for --cores 0 and --cores all,
    copied back where the report reads them."""
    root = write_synthetic_sweep(tmp_path_factory.mktemp("board-report"), SWEEP)
    images = root / "street"
    images.mkdir()
    for i, image in enumerate(street_images(6)):
        cv2.imwrite(str(images / f"street{i}.jpg"), image)
    bundle = build_bundle(root, EXP, seed=0)
    folder = Experiment(EXP, root).board_reports
    reports = {cores: measure(bundle, images, folder / f"cores-{cores}.json", cores) for cores in ("0", "all")}
    return root, images, reports


def section(md: str, heading: str) -> str:
    return md.split(f"## {heading}\n", 1)[1].split("\n## ", 1)[0]


def test_the_board_reports_are_read_beside_the_accuracy_and_labelled_x86(measured):
    from services.report import report
    root, _, reports = measured
    data = report.run_sweep(SWEEP, root=root, examples=0)
    folder = root / "artifacts" / SWEEP / "report"
    metrics = json.loads((root / "artifacts" / EXP / "metrics" / "onnx-rknn-head.json").read_text())
    ap50 = metrics["sets"]["val"]["coco"]["AP50"]
    md = (folder / "report.md").read_text()
    shown = {r["cores"]: r for r in md_rows(md, "Board measurements")}
    assert set(shown) == {"0", "0, 1, 2"}
    for cores, row in (("0", shown["0"]), ("all", shown["0, 1, 2"])):
        latency = reports[cores]["latency_ms"]
        assert row["measured on"] == X86 and row["variant"] == "a" and row["format"] == "onnx-rknn-head"
        assert row["n"] == "1" and row["tiles"] == "1" and row["frames"] == "6" and row["AP50"] == f"{ap50:.3f}"
        for stage, column in (("read", "read ms"), ("pre", "pre ms"), ("npu", "NPU ms"), ("post", "post ms")):
            assert row[column] == f"{latency[stage]['mean']:.1f}", (cores, stage)
        total = sum(latency[k]["mean"] for k in ("read", "pre", "npu", "post"))
        assert row["sum ms"] == f"{total:.1f}"
        assert row["frames/s"] == f"{reports[cores]['throughput_fps']['mean']:.1f}"
    # measured on a PC's CPU: never labelled as the board, and not plotted as the board's latency
    assert "board" not in X86 and "NPU (board)" not in section(md, "Board measurements")
    assert all(not r["on_board"] and r["measured_on"] == X86 for r in data["board"])
    caption = next(f["caption"] for f in data["figures"] if f["name"] == "size_latency")
    assert "no latency was measured on the board" in caption and "estimate" in caption
    # the same table in the page and in LaTeX, and the files in the report's fingerprint
    page = (folder / "report.html").read_text()
    assert "<h2>Board measurements</h2>" in page and f"<td>{X86}</td>" in page
    assert "tab:syn-board" in (folder / "tables.tex").read_text()
    inputs = json.loads((folder / "report.json").read_text())["fingerprint"]["inputs"]
    assert {f"artifacts/{EXP}/board-reports/cores-{c}.json" for c in ("0", "all")} <= set(inputs)


def test_a_board_report_of_another_model_is_one_line_naming_both(measured, tmp_path):
    """Another experiment's model measured, copied back into syn-a-s0's folder: one line, exit 2,
    nothing written. Then syn-a-s0 converted again: its old measurements are another model's."""
    from services.report import report
    root, images, _ = measured
    copy = tmp_path / "root"
    shutil.copytree(root, copy, ignore=shutil.ignore_patterns("report"))
    other = build_bundle(copy, "other", seed=1)
    folder = Experiment(EXP, copy).board_reports
    measure(other, images, folder / "other-cores-0.json", "0")
    line = one_error(run_module("report", ["--sweep", SWEEP], copy))
    assert "board-reports/other-cores-0.json measured another model" in line, line
    assert "other.rknn-head.onnx of experiment 'other'" in line and f"not {EXP}'s {EXP}.rknn-head.onnx" in line
    assert not (copy / "artifacts" / SWEEP / "report").exists()

    (folder / "other-cores-0.json").unlink()
    report.run_sweep(SWEEP, root=copy, examples=0)  # its own measurements alone: accepted
    time.sleep(1.1)  # bundle.json's time stamp counts seconds: a conversion in the same second would not show
    measured_sha = json.loads((folder / "cores-0.json").read_text())["model_sha256"]
    bundle = build_bundle(copy, EXP, seed=2)
    ours = json.loads((bundle / "bundle.json").read_text())["files"][f"{EXP}.rknn-head.onnx"]
    assert measured_sha != ours
    with pytest.raises(UserError, match=rf"cores-0.json measured another model: {EXP}.rknn-head.onnx with sha256 "
                                        rf"{measured_sha[:16]}, not {EXP}'s {EXP}.rknn-head.onnx \(sha256 {ours[:16]}"):
        report.run_sweep(SWEEP, root=copy, examples=0)
    # a report from before the checksum was recorded: told apart by the bundle's identity (its build time)
    old = json.loads((folder / "cores-0.json").read_text())
    del old["model_sha256"]
    (folder / "cores-0.json").write_text(json.dumps(old))
    with pytest.raises(UserError, match=rf"cores-0.json measured another model: {EXP}.rknn-head.onnx of experiment "
                                        rf"'{EXP}' \(bundle built [^)]*\), not {EXP}'s"):
        report.run_sweep(SWEEP, root=copy, examples=0)


def test_board_reports_without_the_bundle_or_unreadable_are_one_line(measured, tmp_path):
    from services.report import report
    root, _, _ = measured
    copy = tmp_path / "root"
    shutil.copytree(root, copy, ignore=shutil.ignore_patterns("report"))
    (Experiment(EXP, copy).board_reports / "cores-0.json").write_text("{")
    with pytest.raises(UserError, match=r"cores-0.json \(a board report .*\) cannot be read .*line 1"):
        report.run_sweep(SWEEP, root=copy, examples=0)
    shutil.rmtree(Experiment(EXP, copy).board)
    with pytest.raises(UserError, match=r"board-reports/ holds board reports, but .*bundle.json .* does not exist"):
        report.run_sweep(SWEEP, root=copy, examples=0)


def test_where_a_report_was_measured():
    """Only the rknn backend ran on the board's NPU; the onnx backend is labelled with its CPU."""
    from services.report.runs import measured_on
    rknn = {"backend": "rknn", "platform": {"soc": "rk3588", "machine": "aarch64", "bundle_platform": "rk3588"}}
    assert measured_on(rknn) == ("rk3588 NPU (board)", True)
    for machine, label in (("x86_64", X86), ("AMD64", X86), ("aarch64", "aarch64 CPU, onnxruntime")):
        assert measured_on({"backend": "onnx", "platform": {"soc": "rk3588", "machine": machine}}) == (label, False)


def test_the_latency_figure_uses_the_board_where_measured_and_an_estimate_elsewhere():
    """A variant whose rknn model was measured on the board: that point at the board's latency (the
    whole frame on one core, filled); every other at the evaluator's (hollow, an estimate), the x86
    detect.py measurement included."""
    from services.report.figures import draw_size_latency
    from tests.test_report import spread
    rows = [{"set": "val", "variant": v, "format": f, "AP50": spread([0.6]), "model_mb": spread([4.0]),
             "latency_ms": spread([50.0 + k])} for v in ("a", "b") for k, f in enumerate(("onnx-rknn-head", "rknn"))]
    board = [{"variant": "a", "format": "rknn", "on_board": True, "measured_on": "rk3588 NPU (board)",
              "contexts": n, "tiles": tiles, "latency_ms": spread([ms])}
             for n, tiles, ms in ((3, 1, 30.0), (1, 1, 21.5), (3, 3, 19.0))]
    board.append({"variant": "b", "format": "rknn", "on_board": False, "measured_on": X86, "contexts": 1,
                  "tiles": 1, "latency_ms": spread([9.0])})
    fig, caption = draw_size_latency(rows, board, {"a": [], "b": []}, "val")
    points = [c.lines[0] for c in fig.axes[1].containers]
    at = sorted((float(p.get_xdata()[0]), p.get_markerfacecolor() == "none") for p in points)  # (x, hollow)
    assert at == [(21.5, False), (50.0, True), (50.0, True), (51.0, True)]
    assert "filled markers: measured on the board (rk3588 NPU (board)" in caption
