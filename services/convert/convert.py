"""RKNN conversion (convert environment: rknn-toolkit2 on x86_64).

artifacts/<exp>/models/<exp>.rknn-head.onnx -> artifacts/<exp>/models/<exp>_<int8|fp16>_<platform>.rknn
then, in the same process (the simulator runs only a model built in the process that built it):
  metrics/quantization.json   per output: cosine similarity and relative error, INT8 vs float
  metrics/rknn.json           the evaluator's metrics with the RKNN simulator as backend
  board/                      the .rknn, labels, the board script and its README
"""
import hashlib
import os
import re
import shutil
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import cv2
import numpy as np

from services.common import files, manifest, paths
from services.common.log import UserError, info, table
from services.common import decode
from services.evaluate import evaluate

STAGE = "convert"


def check_onnx(path: Path, root: Path) -> tuple[tuple[int, int], str]:
    """Static (1, 3, h, w) input, an opset the toolkit takes and an output layout the decode knows;
    returns ((h, w), layout)."""
    import onnx
    if not path.is_file():
        raise UserError(f"no {paths.rel(path, root)} yet; run `make export` first")
    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as e:
        raise UserError(f"{paths.rel(path, root)} is not a readable ONNX model ({type(e).__name__}); "
                        f"export it again (`make export FORCE=1`)")
    opset = max((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), default=0)
    if not 7 <= opset <= 19:
        raise UserError(f"{paths.rel(path, root)} uses opset {opset}, which rknn-toolkit2 refuses; "
                        f"export again with export.opset=12")
    dims = [d.dim_value if d.HasField("dim_value") else d.dim_param for d in
            model.graph.input[0].type.tensor_type.shape.dim]
    if len(dims) != 4 or not all(isinstance(d, int) and d > 0 for d in dims) or dims[0] != 1 or dims[1] != 3:
        raise UserError(f"{paths.rel(path, root)} has input shape {dims}; the NPU needs a static (1, 3, h, w) "
                        f"input: export again without dynamic axes (`make export`)")
    size = (dims[2], dims[3])
    shapes = [[d.dim_value for d in o.type.tensor_type.shape.dim] for o in model.graph.output]
    try:
        layout = decode.layout_of(shapes, size)
    except ValueError as e:
        raise UserError(f"{paths.rel(path, root)}: {e}; export it again (`make export FORCE=1`)")
    if layout == "standard":
        raise UserError(f"{paths.rel(path, root)} has the standard head (one output of boxes and scores), which "
                        f"INT8 turns into all-zero scores; export the RKNN head (`make export FORCE=1`)")
    if layout == "end2end":
        raise UserError(f"{paths.rel(path, root)} has ultralytics' end2end output (top-k inside, ONNX TopK, which "
                        f"rknn-toolkit2 does not run); export the RKNN head with export.rknn_head=one2one")
    return size, layout


def calibration_images(cfg: dict, root: Path) -> list[Path]:
    c = cfg["convert"]
    listing = root / c["calibration"] if c["calibration"] else \
        paths.yolo_dir(cfg["dataset"]["name"], root) / "calib.txt"
    if not listing.is_file():
        raise UserError(f"no calibration list {paths.rel(listing, root)}; run `make dataset` (it writes calib.txt) "
                        f"or set convert.calibration=PATH")
    images = [root / line.strip() for line in listing.read_text().splitlines() if line.strip()]
    bad = [p for p in images if cv2.imread(str(p)) is None]
    if bad or not images:
        shown = ", ".join(paths.rel(p, root) for p in bad[:3])
        raise UserError(f"calibration list {paths.rel(listing, root)}: {len(bad)} of {len(images)} image(s) missing "
                        f"or unreadable ({shown or 'the list is empty'}); rebuild it with `make dataset FORCE=1`")
    return images


def build_hybrid(rknn, listing: Path, work: Path, keep: str) -> list[str]:
    """Hybrid INT8 build with part of the Detect head kept in fp16 (`keep`: scores = the class-score
    branch of each stride, head = the box branches too), by rknn-toolkit2's two-step hybrid
    quantization with its configuration edited in between: step 1 quantizes the whole model and
    writes <model>.quantization.cfg; the tensors of those branches and of the outputs they feed are
    listed there under custom_quantize_layers as float16; step 2 builds from it. Scores rank the
    detections and the miss rate reads nothing else, so they are what INT8 must not blur. Returns
    the tensors kept in fp16."""
    tmp = files.temp_name(work / "hybrid")  # its pid in the name: a killed run's is cleaned up later
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    here = os.getcwd()
    os.chdir(tmp)  # step 1 writes its three files into the working directory
    try:
        toolkit_call("hybrid_quantization_step1", rknn.hybrid_quantization_step1, dataset=str(listing))
        cfg = next(Path(tmp).glob("*.quantization.cfg"))
        text = cfg.read_text()
        tensors = re.findall(r"^    (\S+):$", text, re.M)
        layers = [int(m) for m in re.findall(r"^/model/model\.(\d+)/", "\n".join(tensors), re.M)]
        detect = f"/model/model.{max(layers, default=-1)}/"  # the Detect head is the last layer
        # one2one_cv3 and one2one_cv2: the one-to-one branches of an NMS-free (YOLO26) head
        branches = ("cv3.", "one2one_cv3.") + (() if keep == "scores" else ("cv2.", "one2one_cv2."))
        outputs = r"score_s\d+(_int8)?" if keep == "scores" else r"(score|box)_s\d+(_int8)?"
        # and the Detect head's own sigmoids: the one2one layout flattens the scores after them, so
        # there they are not the outputs themselves
        sigmoids = re.escape(detect) + r"Sigmoid(_\d+)?_output_0"
        kept = [t for t in tensors if any(t.startswith(detect + b) for b in branches) or re.fullmatch(outputs, t)
                or re.fullmatch(sigmoids, t)]
        found = any(t.startswith((detect + "cv3.", detect + "one2one_cv3.")) for t in kept)
        if not found or "custom_quantize_layers: {}\n" not in text:
            raise UserError("rknn-toolkit2's hybrid configuration does not have the expected form (no Detect "
                            "head branches found); use convert.hybrid=none or auto")
        cfg.write_text(text.replace("custom_quantize_layers: {}\n", "custom_quantize_layers:\n"
                                    + "".join(f"    {t}: float16\n" for t in kept), 1))
        toolkit_call("hybrid_quantization_step2", rknn.hybrid_quantization_step2,
                     model_input=str(cfg.with_name(cfg.name.replace(".quantization.cfg", ".model"))),
                     data_input=str(cfg.with_name(cfg.name.replace(".quantization.cfg", ".data"))),
                     model_quantization_cfg=str(cfg))
    finally:
        os.chdir(here)
        shutil.rmtree(tmp, ignore_errors=True)
    return kept


def letterboxed_copies(images: list[Path], size, cache: Path) -> list[Path]:
    """The calibration images pre-processed exactly as at inference (letterboxed to the input size),
    cached by size, so the quantizer sees what the NPU will see."""
    cache.mkdir(parents=True, exist_ok=True)
    out = []
    for p in images:
        target = cache / (p.stem + ".png")
        if not target.is_file():
            padded, _, _ = decode.letterbox(cv2.imread(str(p)), size)
            with files.atomic_path(target) as tmp:
                cv2.imwrite(str(tmp), padded)  # the toolkit reads image files as RGB (quant_img_RGB2BGR=False)
        out.append(target)
    return out


TOOLKIT_LOG: Path | None = None  # where rknn-toolkit2's own output goes (set by run)


@contextmanager
def toolkit_output():
    """rknn-toolkit2 prints hundreds of lines of progress, from Python and from its C++ core alike: send
    file descriptors 1 and 2 to TOOLKIT_LOG while it works (the terminal keeps our own lines)."""
    if TOOLKIT_LOG is None:
        yield
        return
    sys.stdout.flush(), sys.stderr.flush()
    saved = os.dup(1), os.dup(2)
    try:
        with open(TOOLKIT_LOG, "a") as log:
            os.dup2(log.fileno(), 1), os.dup2(log.fileno(), 2)
            try:
                yield
            finally:
                sys.stdout.flush(), sys.stderr.flush()
                os.dup2(saved[0], 1), os.dup2(saved[1], 2)
    finally:
        os.close(saved[0]), os.close(saved[1])


def toolkit_call(what: str, fn, *args, **kwargs):
    """One rknn-toolkit2 call with its output in the log; a failure is one line, after the log's last lines."""
    try:
        with toolkit_output():
            ret = fn(*args, **kwargs)
    except Exception as e:
        ret = f"{type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''}"
    if ret != 0:
        if TOOLKIT_LOG is not None and TOOLKIT_LOG.is_file():
            tail = [line for line in TOOLKIT_LOG.read_text(errors="replace").replace("\r", "\n").splitlines()
                    if line.strip()][-15:]
            print("rknn-toolkit2's last log lines:\n" + "\n".join(f"  | {line}" for line in tail), file=sys.stderr)
        where = f" (whole log: {paths.rel(TOOLKIT_LOG)})" if TOOLKIT_LOG is not None else ""
        raise UserError(f"rknn-toolkit2 {what} failed ({ret}); its last log lines are above{where}")
    return ret


class RknnSimBackend:
    """The evaluator's backend for the RKNN simulator: the model takes letterboxed uint8 RGB NHWC and
    normalises it itself (mean 0, std 255, set at build time)."""

    name, batch_ok = "rknn", False

    def __init__(self, rknn, size, layout: str):
        self.rknn, self.size, self.layout = rknn, size, layout
        self.device = f"rknn-toolkit2 simulator on x86_64 ({manifest.cpu_name()})"
        self.max_score = 0.0

    def __call__(self, x: np.ndarray) -> list[np.ndarray]:
        image = np.rint(x[0].transpose(1, 2, 0) * 255).astype(np.uint8)[None]
        outputs = self.rknn.inference(inputs=[image], data_format="nhwc")
        scores = outputs[1::2] if self.layout in ("dfl", "distances", "one2one") else outputs[1:2]
        self.max_score = max([self.max_score] + [float(np.max(s)) for s in scores])
        return outputs


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
        image = np.rint(x[0].transpose(1, 2, 0) * 255).astype(np.uint8)[None]
        for k, o in enumerate(rknn.inference(inputs=[image], data_format="nhwc")):
            arrays[f"out_{i}_{k}"] = o
    with files.atomic_path(out) as tmp:
        np.savez(tmp, names=np.array([p.name for p in images]), **arrays)


def quantization_report(rknn, images: list[Path], keep_dumps: bool, out: Path) -> dict:
    """rknn-toolkit2's accuracy analysis (float vs quantized, simulator) reduced to the model outputs."""
    dump = files.temp_name(out.parent / "rknn-analysis")
    shutil.rmtree(dump, ignore_errors=True)
    try:
        toolkit_call("accuracy_analysis", rknn.accuracy_analysis, inputs=[str(p) for p in images],
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


def fingerprint(cfg: dict, onnx_path: Path, images: list[Path], root: Path) -> dict:
    """Everything the .rknn, its metrics and the board bundle depend on. If it equals the manifest's,
    the stage has nothing to do (the toolkit's builds are not byte-reproducible, so rebuilding would
    only churn)."""
    from importlib import metadata
    val_gt = paths.yolo_dir(cfg["dataset"]["name"], root) / "val_gt.json"
    calibration = hashlib.sha256()
    for p in images:
        calibration.update(f"{paths.rel(p, root)} {files.sha256_file(p)}\n".encode())
    return {"onnx_sha256": files.sha256_file(onnx_path), "calibration_sha256": calibration.hexdigest(),
            "val_gt_sha256": files.sha256_file(val_gt) if val_gt.is_file() else None,
            "convert": cfg["convert"], "evaluate": cfg["evaluate"], "evaluator_version": evaluate.EVALUATOR_VERSION,
            "toolkit_version": metadata.version("rknn-toolkit2")}


def calibration_listing(images: list, size: tuple[int, int], art: Path) -> Path:
    """The calibration images letterboxed to the model's input (cached by size) and the list the
    toolkit reads."""
    cache = art / "rknn" / f"calib-{size[0]}x{size[1]}"
    calib = letterboxed_copies(images, size, cache)
    listing = cache.parent / f"calib-{size[0]}x{size[1]}.txt"
    files.atomic_write_text(listing, "".join(f"{p.resolve()}\n" for p in calib))
    return listing


def build_model(rknn, c: dict, onnx_path: Path, listing: Path, art: Path) -> list:
    """config, load_onnx and build (or the hybrid build) with the convert settings `c`: the one build
    sequence, for this stage and for `make predict FORMAT=rknn` (the simulator runs only a model
    built in its own process). Returns the layers kept in fp16."""
    toolkit_call("config", rknn.config, mean_values=[[0, 0, 0]], std_values=[[255, 255, 255]],
                 target_platform=c["platform"], quantized_algorithm=c["algorithm"], quantized_dtype="w8a8")
    toolkit_call("load_onnx", rknn.load_onnx, model=str(onnx_path))
    if c["hybrid"] in ("scores", "head"):
        return build_hybrid(rknn, listing, art / "rknn", c["hybrid"])
    toolkit_call("build", rknn.build, do_quantization=c["dtype"] == "int8", dataset=str(listing),
                 auto_hybrid=c["hybrid"] == "auto")
    return []


def run(cfg: dict, root: Path = paths.ROOT, force: bool = False) -> dict:
    global TOOLKIT_LOG
    c, exp = cfg["convert"], cfg["experiment"]
    art = paths.artifacts_dir(exp, root)
    onnx_path = art / "models" / f"{exp}.rknn-head.onnx"
    size, layout = check_onnx(onnx_path, root)
    images = calibration_images(cfg, root)
    target = art / "models" / f"{exp}_{c['dtype']}_{c['platform']}.rknn"
    manifest_path = art / "models" / f"{target.stem}.manifest.json"
    fp = fingerprint(cfg, onnx_path, images, root)
    old = files.read_json(manifest_path)
    if (not force and old and old.get("fingerprint") == fp and target.is_file()
            and (art / "metrics" / "rknn.json").is_file() and (art / "board" / "bundle.json").is_file()):
        info(STAGE, f"{paths.rel(target, root)} is up to date (inputs, settings and toolkit unchanged); "
                    f"FORCE=1 rebuilds it")
        return old
    from rknn.api import RKNN
    started, t0 = manifest.now(), time.perf_counter()
    seconds = {}
    (art / "rknn").mkdir(parents=True, exist_ok=True)
    TOOLKIT_LOG = art / "rknn" / "toolkit.log"
    TOOLKIT_LOG.write_text("")
    info(STAGE, f"building {paths.rel(target, root)}; rknn-toolkit2's own messages go to "
                f"{paths.rel(TOOLKIT_LOG, root)}")

    t = time.perf_counter()
    listing = calibration_listing(images, size, art)
    seconds["calibration_prep"] = round(time.perf_counter() - t, 2)

    with toolkit_output():
        rknn = RKNN(verbose=False)
    try:
        t = time.perf_counter()
        kept_fp16 = build_model(rknn, c, onnx_path, listing, art)
        seconds["build"] = round(time.perf_counter() - t, 2)
        with files.atomic_path(target) as tmp:
            toolkit_call("export_rknn", rknn.export_rknn, str(tmp))

        val_images = sorted((paths.yolo_dir(cfg["dataset"]["name"], root) / "val" / "images").glob("*.png"))
        t = time.perf_counter()
        analysis = letterboxed_copies(val_images[:c["analysis_images"]], size,  # cached by size, as calibration
                                      art / "rknn" / f"analysis-inputs-{size[0]}x{size[1]}")
        quant = quantization_report(rknn, analysis, c["keep_analysis_dumps"], art / "metrics" / "quantization.json")
        seconds["accuracy_analysis"] = round(time.perf_counter() - t, 2)

        toolkit_call("init_runtime (simulator)", rknn.init_runtime)
        with toolkit_output():
            quant["float_vs_quantized"] = float_vs_quantized(rknn, onnx_path, analysis)
        backend = RknnSimBackend(rknn, size, layout)
        t = time.perf_counter()
        metrics = evaluate.evaluate_one(cfg, "rknn", target, root, force=True, backend=backend, size=size)
        seconds["simulator_evaluation"] = round(time.perf_counter() - t, 2)
        with toolkit_output():
            save_simulator_outputs(rknn, val_images[:2], size, art / "rknn" / "simulator_outputs.npz")
    finally:
        with toolkit_output():
            rknn.release()

    quant.update(max_score_on_val=backend.max_score, all_scores_zero=backend.max_score == 0.0)
    files.atomic_write_json(art / "metrics" / "quantization.json", quant)
    from importlib import metadata
    result = {**manifest.provenance(STAGE, cfg, ["rknn-toolkit2", "onnx", "onnxruntime", "numpy", "torch"]),
              "onnx": paths.rel(onnx_path, root), "rknn": paths.rel(target, root), "rknn_bytes": target.stat().st_size,
              "imgsz_hw": list(size), "layout": layout, "calibration_images": len(images), "seconds": seconds,
              "settings": {k: c[k] for k in ("platform", "dtype", "algorithm", "hybrid")},
              "kept_in_fp16": kept_fp16,
              "toolkit_version": metadata.version("rknn-toolkit2"), "fingerprint": fp,
              "toolkit_log": paths.rel(TOOLKIT_LOG, root),
              "started": started, "finished": manifest.now(), "wall_s": round(time.perf_counter() - t0, 2)}
    from . import board
    board.write_bundle(cfg, target, size, layout, result["toolkit_version"], root)
    files.atomic_write_json(manifest_path, result)  # last: it is what says the stage is done
    val = metrics["sets"].get("val", {})
    print(table(["model", "MB", "build s", "AP50 (simulator)", "max score", "MR-2 Reasonable %"],
                [[paths.rel(target, root), f"{target.stat().st_size / 1e6:.1f}", seconds["build"],
                  f"{val.get('coco', {}).get('AP50', float('nan')):.3f}", f"{backend.max_score:.3f}",
                  f"{100 * (val.get('miss_rate') or {}).get('Reasonable', float('nan')):.2f}"]],
                title="\nRKNN"))
    evaluate.write_summary(art / "metrics", root)
    return result
