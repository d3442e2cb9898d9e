"""RKNN conversion (convert environment: rknn-toolkit2 on x86_64).

artifacts/<exp>/models/<exp>.rknn-head.onnx -> artifacts/<exp>/models/<exp>_<int8|fp16>_<platform>.rknn
then, in the same process (the simulator runs only a model built in the process that built it):
  metrics/quantization.json   per output: cosine similarity and relative error, INT8 vs float
  metrics/rknn.json           the evaluator's metrics with the RKNN simulator as backend
  board/                      the .rknn, labels, the board script and its README
"""
import re
import shutil
import time
from pathlib import Path

import cv2
import numpy as np

from services.common import backends, decode, files, manifest, paths, toolkit, uptodate
from services.common.layout import Experiment
from services.common.log import info, table
from services.evaluate import evaluate

STAGE = "convert"


def float_vs_quantized(rknn, onnx_path: Path, images: list[Path]) -> dict:
    """Per output, over the analysis images: cosine similarity and relative error (||q - f|| / ||f||) of
    the simulator's quantized outputs against the float ONNX model run by onnxruntime."""
    import onnxruntime as ort
    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    stats = {n: {"cosine": [], "relative_error": []} for n in names}
    for p in images:  # already letterboxed to the input size
        rgb = cv2.imread(str(p))[:, :, ::-1]
        floats = session.run(None, {session.get_inputs()[0].name:
                                    np.ascontiguousarray(rgb.transpose(2, 0, 1)[None], dtype=np.float32) / 255})
        quants = rknn.inference(inputs=[np.ascontiguousarray(rgb[None])], data_format="nhwc")
        for n, f, q in zip(names, floats, quants):
            f, q = f.ravel().astype(np.float64), q.ravel().astype(np.float64)
            stats[n]["cosine"].append(float(f @ q / (np.linalg.norm(f) * np.linalg.norm(q) + 1e-12)))
            stats[n]["relative_error"].append(float(np.linalg.norm(q - f) / (np.linalg.norm(f) + 1e-12)))
    return {n: {"cosine_min": min(v["cosine"]), "cosine_mean": float(np.mean(v["cosine"])),
                "relative_error_max": max(v["relative_error"]),
                "relative_error_mean": float(np.mean(v["relative_error"]))} for n, v in stats.items()}


def save_simulator_outputs(rknn, images: list[Path], size, out: Path) -> None:
    """Raw simulator outputs for a few val images (out_<image>_<output>): the board script's decode is
    tested against them."""
    arrays = {}
    for i, p in enumerate(images):
        x, _ = decode.preprocess(cv2.imread(str(p)), size)
        for k, o in enumerate(rknn.inference(inputs=[backends.as_uint8_nhwc(x)], data_format="nhwc")):
            arrays[f"out_{i}_{k}"] = o
    with files.atomic_path(out) as tmp:
        np.savez(tmp, names=np.array([p.name for p in images]), **arrays)


def fingerprint(cfg: dict, onnx_path: Path, images: list[Path], root: Path) -> dict:
    """Everything the .rknn, its metrics and the board bundle depend on: the model's inputs and the
    evaluation's. If it equals the manifest's, the stage has nothing to do (the toolkit's builds are
    not byte-reproducible, so rebuilding would only churn)."""
    val_gt = paths.yolo_dir(cfg["dataset"]["name"], root) / "val_gt.json"
    return {**toolkit.model_fingerprint(cfg, onnx_path, images, root),
            "val_gt_sha256": files.sha256_file(val_gt) if val_gt.is_file() else None,
            "evaluate": cfg["evaluate"], "evaluator_version": evaluate.EVALUATOR_VERSION}


def quantization_report(kit: toolkit.Toolkit, rknn, images: list[Path], keep_dumps: bool, out: Path) -> dict:
    """rknn-toolkit2's accuracy analysis (float vs quantized, simulator) reduced to the model outputs."""
    dump = files.temp_name(out.parent / "rknn-analysis")
    shutil.rmtree(dump, ignore_errors=True)
    try:
        kit.call("accuracy_analysis", rknn.accuracy_analysis, inputs=[str(p) for p in images],
                     output_dir=str(dump))
        report = (dump / "error_analysis.txt").read_text()
        outputs = {}
        for line in report.splitlines():
            # lines look like: "[Conv] boxes    1.00000 | 0.99812   ..." ; keep the model outputs only
            m = re.match(r"\s*\[[^\]]*\]\s+(boxes|scores|box_s\d+|score_s\d+)\s+(.*)", line)
            if m:
                nums = [float(v) for v in re.findall(r"-?\d+\.\d+(?:e-?\d+)?", m.group(2))]
                outputs[m.group(1)] = {"values": nums, "line": line.strip()}
        summary = {"images": [p.name for p in images], "outputs": outputs,
                   "legend": report.splitlines()[:6]}
        if keep_dumps:
            target = out.parent / "rknn-analysis"
            if target.exists():
                files.move_aside(target)
            shutil.move(str(dump), target)
            summary["dumps"] = str(target)
        return summary
    finally:
        shutil.rmtree(dump, ignore_errors=True)


def run(cfg: dict, root: Path = paths.ROOT, force: bool = False) -> dict:
    c, exp = cfg["convert"], Experiment.of(cfg, root)
    size, layout = toolkit.check_onnx(exp.rknn_head_onnx, root)
    images = toolkit.calibration_images(cfg, root)
    target = exp.rknn(c)
    fp = fingerprint(cfg, exp.rknn_head_onnx, images, root)
    old = uptodate.check(STAGE, exp.manifest_of(target), fp, root, force,
                         f"{paths.rel(target, root)} is up to date (inputs, settings and toolkit unchanged); "
                         f"FORCE=1 rebuilds it", self_kept=(exp.board,))
    if old:
        return old
    started, t0 = manifest.now(), time.perf_counter()
    exp.toolkit_work.mkdir(parents=True, exist_ok=True)
    kit = toolkit.Toolkit(exp.toolkit_work / "toolkit.log")
    kit.log.write_text("")
    info(STAGE, f"building {paths.rel(target, root)}; rknn-toolkit2's own messages go to {paths.rel(kit.log, root)}")
    built = build_and_measure(cfg, exp, kit, size, layout, images)
    result = {**manifest.provenance(STAGE, cfg, ["rknn-toolkit2", "onnx", "onnxruntime", "numpy", "torch"]),
              "onnx": paths.rel(exp.rknn_head_onnx, root), "rknn": paths.rel(target, root),
              "rknn_bytes": target.stat().st_size, "imgsz_hw": list(size), "layout": layout,
              "calibration_images": len(images), "seconds": built["seconds"],
              "settings": {k: c[k] for k in ("platform", "dtype", "algorithm", "hybrid")},
              "kept_in_fp16": built["kept_fp16"], "toolkit_version": fp["toolkit_version"], "fingerprint": fp,
              "toolkit_log": paths.rel(kit.log, root),
              "started": started, "finished": manifest.now(), "wall_s": round(time.perf_counter() - t0, 2)}
    from . import board
    board.write_bundle(cfg, target, size, layout, fp["toolkit_version"], root)
    result["outputs"] = uptodate.record([target, exp.metrics_of("rknn"), exp.quantization, exp.board / "bundle.json"],
                                        root)
    files.atomic_write_json(exp.manifest_of(target), result)  # last: it is what says the stage is done
    print_summary(target, built, root)
    evaluate.write_summary(exp.metrics, root)
    return result


def build_and_measure(cfg: dict, exp: Experiment, kit: toolkit.Toolkit, size, layout: str, images: list) -> dict:
    """Build the .rknn, then, in the same process (the simulator runs only a model built there): the
    quantization report, the simulator's evaluation and its raw outputs for the board's tests."""
    c, seconds, root = cfg["convert"], {}, exp.root
    t = time.perf_counter()
    listing = toolkit.calibration_listing(cfg, exp, images, size)
    seconds["calibration_prep"] = round(time.perf_counter() - t, 2)
    rknn = kit.new()
    try:
        t = time.perf_counter()
        kept_fp16 = kit.build(rknn, c, exp.rknn_head_onnx, listing, exp.toolkit_work)
        seconds["build"] = round(time.perf_counter() - t, 2)
        with files.atomic_path(exp.rknn(c)) as tmp:
            kit.call("export_rknn", rknn.export_rknn, str(tmp))

        val_images = sorted((paths.yolo_dir(cfg["dataset"]["name"], root) / "val" / "images").glob("*.png"))
        t = time.perf_counter()
        analysis = toolkit.letterboxed_copies(val_images[:c["analysis_images"]], size,  # cached by size
                                              exp.toolkit_work / f"analysis-inputs-{size[0]}x{size[1]}")
        quant = quantization_report(kit, rknn, analysis, c["keep_analysis_dumps"], exp.quantization)
        seconds["accuracy_analysis"] = round(time.perf_counter() - t, 2)

        backend = kit.simulator(rknn, size, layout)
        with kit.output():
            quant["float_vs_quantized"] = float_vs_quantized(rknn, exp.rknn_head_onnx, analysis)
        t = time.perf_counter()
        metrics = evaluate.evaluate_one(cfg, "rknn", exp.rknn(c), root, force=True, backend=backend, size=size)
        seconds["simulator_evaluation"] = round(time.perf_counter() - t, 2)
        with kit.output():
            save_simulator_outputs(rknn, val_images[:2], size, exp.toolkit_work / "simulator_outputs.npz")
    finally:
        kit.release(rknn)
    quant.update(max_score_on_val=backend.max_score, all_scores_zero=backend.max_score == 0.0)
    files.atomic_write_json(exp.quantization, quant)
    return {"seconds": seconds, "kept_fp16": kept_fp16, "metrics": metrics, "max_score": backend.max_score}


def print_summary(target: Path, built: dict, root: Path) -> None:
    val = built["metrics"]["sets"].get("val", {})
    print(table(["model", "MB", "build s", "AP50 (simulator)", "max score", "MR-2 Reasonable %"],
                [[paths.rel(target, root), f"{target.stat().st_size / 1e6:.1f}", built["seconds"]["build"],
                  f"{val.get('coco', {}).get('AP50', float('nan')):.3f}", f"{built['max_score']:.3f}",
                  f"{100 * (val.get('miss_rate') or {}).get('Reasonable', float('nan')):.2f}"]],
                title="\nRKNN"))
