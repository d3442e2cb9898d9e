"""rknn-toolkit2 on x86_64, for the convert stage and `make predict FORMAT=rknn` alike: the checks of
the ONNX it takes, the calibration list, the one build sequence (with the hybrid INT8 steps), the
fingerprint of what a .rknn is built from, and a Toolkit object that owns the file the toolkit's own
output goes to. Runs in the convert environment (rknn-toolkit2, numpy 1.26, no ultralytics).

The simulator runs only a model built in the process that built it, so whoever wants to run a .rknn
on x86 builds its model again here, from the inputs the fingerprint names.
"""
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
from contextlib import contextmanager
from pathlib import Path

import cv2
import numpy as np

from . import backends, decode, files, paths
from .config import TOOLKIT_OPSETS
from .log import UserError

NORMALISE = {"mean_values": [[0, 0, 0]], "std_values": [[255, 255, 255]]}  # the model takes uint8 RGB


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
    if not TOOLKIT_OPSETS[0] <= opset <= TOOLKIT_OPSETS[1]:
        raise UserError(f"{paths.rel(path, root)} uses opset {opset}, which rknn-toolkit2 refuses; "
                        f"export again with export.opset=12")
    dims = [d.dim_value if d.HasField("dim_value") else d.dim_param for d in
            model.graph.input[0].type.tensor_type.shape.dim]
    if len(dims) != 4 or not all(isinstance(d, int) and d > 0 for d in dims) or dims[0] != 1 or dims[1] != 3:
        raise UserError(f"{paths.rel(path, root)} has input shape {dims}; the NPU needs a static (1, 3, h, w) "
                        f"input: export again without dynamic axes (`make export`)")
    size = (dims[2], dims[3])
    shapes = [[d.dim_value for d in o.type.tensor_type.shape.dim] for o in model.graph.output]
    return size, rknn_layout(shapes, size, path, root)


def rknn_layout(shapes: list, size, path: Path, root: Path) -> str:
    """The output layout of an ONNX the toolkit can quantize: per-stride outputs, not one tensor."""
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
    return layout


def calibration_images(cfg: dict, root: Path) -> list[Path]:
    c = cfg["convert"]
    listing = root / c["calibration"] if c["calibration"] else \
        paths.yolo_dir(cfg["dataset"]["name"], root) / "calib.txt"
    if not listing.is_file():
        raise UserError(f"no calibration list {paths.rel(listing, root)}; run `make dataset` (it writes calib.txt) "
                        f"or set convert.calibration=PATH")
    images = [root / line.strip() for line in listing.read_text().splitlines() if line.strip()]
    bad = [p for p in images if not p.is_file() or cv2.imread(str(p)) is None]  # no OpenCV warning for a missing one
    if bad or not images:
        shown = ", ".join(paths.rel(p, root) for p in bad[:3])
        raise UserError(f"calibration list {paths.rel(listing, root)}: {len(bad)} of {len(images)} image(s) missing "
                        f"or unreadable ({shown or 'the list is empty'}); rebuild it with `make dataset FORCE=1`")
    return images


def letterboxed_copies(images: list[Path], size, cache: Path, tiles: int = 1, overlap: float = 0.0) -> list[Path]:
    """The images pre-processed exactly as at inference (letterboxed to the input size), cached by
    size and by the source's sha256 (a changed picture under the same name is letterboxed anew), so the
    quantizer sees what the NPU will see. With tiles (evaluate.tiles) the NPU sees tiles: each image
    gives one of its tiles, the k-th image its (k mod tiles)-th, so every position is seen for the cost
    of one input per image."""
    cache.mkdir(parents=True, exist_ok=True)
    out = []
    for k, p in enumerate(images):
        source = files.sha256_file(p)[:12]
        target = cache / (f"{p.stem}.{source}" + (f".tile{k % tiles}" if tiles > 1 else "") + ".png")
        if not target.is_file():
            image = cv2.imread(str(p))
            try:
                padded = decode.letterbox_tiles(image, size, tiles, overlap)[k % tiles][0] if tiles > 1 else \
                    decode.letterbox(image, size)[0]
            except ValueError as e:  # tiles this frame cannot carry: the evaluation would refuse them too
                raise UserError(f"{paths.rel(p)}: evaluate.{e}") from None
            with files.atomic_path(target) as tmp:
                cv2.imwrite(str(tmp), padded)  # the toolkit reads image files as RGB (quant_img_RGB2BGR=False)
        out.append(target)
    return out


def calibration_listing(cfg: dict, exp, images: list, size: tuple[int, int]) -> Path:
    """The calibration images letterboxed to the model's input into the layout's calibration_copies
    (cached by size and tiling) and the list the toolkit reads, beside it. The tiling is the one the
    model is evaluated with (evaluate.tiles): the NPU sees tiles, so the quantizer must. Every build
    (the convert stage's, predict's for the simulator) calls this, so none can calibrate otherwise."""
    tiles, overlap = cfg["evaluate"]["tiles"], cfg["evaluate"]["tile_overlap"]
    copies = exp.calibration_copies(size, tiles, overlap)
    calib = letterboxed_copies(images, size, copies, tiles, overlap)
    listing = copies.with_name(f"{copies.name}.txt")
    files.atomic_write_text(listing, "".join(f"{p.resolve()}\n" for p in calib))
    return listing


def model_fingerprint(cfg: dict, onnx_path: Path, images: list[Path], root: Path) -> dict:
    """Everything a .rknn's model depends on: its ONNX, the calibration images, the convert settings
    and the toolkit's version."""
    from importlib import metadata
    calibration = hashlib.sha256()
    for p in images:
        calibration.update(f"{paths.rel(p, root)} {files.sha256_file(p)}\n".encode())
    return {"onnx_sha256": files.sha256_file(onnx_path), "calibration_sha256": calibration.hexdigest(),
            "convert": cfg["convert"], "toolkit_version": metadata.version("rknn-toolkit2")}


class Toolkit:
    """rknn-toolkit2 with its output in one log file. It prints hundreds of lines of progress, from
    Python and from its C++ core alike: file descriptors 1 and 2 go to `log` while it works (the
    terminal keeps our own lines); a failed call is one line, after the log's last lines."""

    def __init__(self, log: Path | None):
        self.log = log

    @contextmanager
    def output(self):
        if self.log is None:
            yield
            return
        sys.stdout.flush(), sys.stderr.flush()
        saved = os.dup(1), os.dup(2)
        try:
            with open(self.log, "a") as log:
                os.dup2(log.fileno(), 1), os.dup2(log.fileno(), 2)
                try:
                    yield
                finally:
                    sys.stdout.flush(), sys.stderr.flush()
                    os.dup2(saved[0], 1), os.dup2(saved[1], 2)
        finally:
            os.close(saved[0]), os.close(saved[1])

    def call(self, what: str, fn, *args, **kwargs):
        try:
            with self.output():
                ret = fn(*args, **kwargs)
        except Exception as e:
            ret = reason(e)
        if ret != 0:
            self.fail(what, ret)
        return ret

    def fail(self, what: str, ret):
        if self.log is not None and self.log.is_file():
            tail = [line for line in self.log.read_text(errors="replace").replace("\r", "\n").splitlines()
                    if line.strip()][-15:]
            print("rknn-toolkit2's last log lines:\n" + "\n".join(f"  | {line}" for line in tail), file=sys.stderr)
        where = f" (whole log: {paths.rel(self.log)})" if self.log is not None else ""
        raise UserError(f"rknn-toolkit2 {what} failed ({ret}); its last log lines are above{where}")

    def new(self):
        from rknn.api import RKNN
        with self.output():
            return RKNN(verbose=False)

    def release(self, rknn) -> None:
        with self.output():
            rknn.release()

    def build(self, rknn, c: dict, onnx_path: Path, listing: Path, work: Path) -> list:
        """config, load_onnx and build (or the hybrid build) with the convert settings `c`: the one build
        sequence, for the convert stage and for `make predict FORMAT=rknn`. Returns the layers kept in fp16."""
        self.call("config", rknn.config, **NORMALISE, **build_settings(c))
        if c["hybrid"] in ("scores", "head"):  # step 2 loads the model step 1 wrote, not the ONNX
            return self.build_hybrid(rknn, c, onnx_path, listing, work)
        self.call("load_onnx", rknn.load_onnx, model=str(onnx_path))
        self.call("build", rknn.build, do_quantization=c["dtype"] == "int8", dataset=str(listing),
                  auto_hybrid=c["hybrid"] == "auto")
        return []

    def build_hybrid(self, rknn, c: dict, onnx_path: Path, listing: Path, work: Path) -> list[str]:
        """Hybrid INT8 build with part of the Detect head kept in fp16 (`c["hybrid"]`: scores = the
        class-score branch of each stride, head = the box branches too), by rknn-toolkit2's two-step
        hybrid quantization with its configuration edited in between: step 1 quantizes the whole model
        and writes <model>.quantization.cfg; the tensors of those branches and of the outputs they feed
        are listed there under custom_quantize_layers as float16; step 2 builds from it. Scores rank
        the detections and the miss rate reads nothing else, so they are what INT8 must not blur.
        Returns the tensors kept in fp16."""
        tmp = files.temp_name(work / "hybrid")  # its pid in the name: a killed run's is cleaned up later
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        try:
            cfg = self.hybrid_step1(c, onnx_path, listing, tmp)
            text = cfg.read_text()
            kept = fp16_tensors(re.findall(r"^    (\S+):$", text, re.M), c["hybrid"])
            if not kept or "custom_quantize_layers: {}\n" not in text:
                raise UserError("rknn-toolkit2's hybrid configuration does not have the expected form (no Detect "
                                "head branches found); use convert.hybrid=none or auto")
            cfg.write_text(text.replace("custom_quantize_layers: {}\n", "custom_quantize_layers:\n"
                                        + "".join(f"    {t}: float16\n" for t in kept), 1))
            self.call("hybrid_quantization_step2", rknn.hybrid_quantization_step2,
                      model_input=str(cfg.with_name(cfg.name.replace(".quantization.cfg", ".model"))),
                      data_input=str(cfg.with_name(cfg.name.replace(".quantization.cfg", ".data"))),
                      model_quantization_cfg=str(cfg))
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        return kept

    def hybrid_step1(self, c: dict, onnx_path: Path, listing: Path, folder: Path) -> Path:
        """Step 1 writes its three files into the working directory and takes no other: it runs in a
        child process started in `folder`, so this process never changes its own. Returns the
        .quantization.cfg it wrote."""
        job = {"settings": build_settings(c), "onnx": str(onnx_path.resolve()), "listing": str(listing.resolve())}
        log = open(self.log, "a") if self.log is not None else None
        try:
            code = subprocess.run([sys.executable, "-m", "services.common.toolkit", "hybrid-step1", json.dumps(job)],
                                  cwd=folder, stdout=log, stderr=log, env={**os.environ, "PYTHONPATH": code_path()})
        finally:
            if log is not None:
                log.close()
        found = sorted(folder.glob("*.quantization.cfg"))
        if code.returncode or not found:
            self.fail("hybrid_quantization_step1", code.returncode or "no .quantization.cfg written")
        return found[0]

    def simulator(self, rknn, size, layout: str) -> backends.RknnSimBackend:
        """The simulator on the model just built, warmed up (its first inference prints the session's
        preparation), as the evaluator's backend."""
        self.call("init_runtime (simulator)", rknn.init_runtime)
        with self.output():
            rknn.inference(inputs=[np.zeros((1, *size, 3), np.uint8)], data_format="nhwc")
        return backends.RknnSimBackend(rknn, size, layout)


def reason(e: Exception) -> str:
    """An exception from the toolkit in a few words: its message's first line, or, when the toolkit
    wrapped a whole traceback into the message, that traceback's last line (the error itself)."""
    lines = [line.strip() for line in str(e).splitlines() if line.strip()]
    if lines and lines[0].startswith("Traceback"):
        lines = lines[-1:]
    return f"{type(e).__name__}: {lines[0][:200]}" if lines else type(e).__name__


def build_settings(c: dict) -> dict:
    """rknn-toolkit2's config() arguments from the convert section (besides the normalisation)."""
    return {"target_platform": c["platform"], "quantized_algorithm": c["algorithm"], "quantized_dtype": "w8a8"}


def fp16_tensors(tensors: list[str], keep: str) -> list[str]:
    """The tensors of the Detect head's branches `keep` names (and of the outputs they feed), from the
    tensor names of step 1's quantization configuration; [] when no score branch is among them."""
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
    return kept if found else []


def code_path() -> str:
    """The folder holding the `services` package, for the child process of hybrid step 1."""
    return str(Path(__file__).resolve().parents[2])


def hybrid_step1_main(job: dict) -> int:
    """The child process of Toolkit.hybrid_step1: config, load_onnx and step 1, in the working directory."""
    from rknn.api import RKNN
    rknn = RKNN(verbose=False)
    steps = [lambda: rknn.config(**NORMALISE, **job["settings"]), lambda: rknn.load_onnx(model=job["onnx"]),
             lambda: rknn.hybrid_quantization_step1(dataset=job["listing"])]
    try:
        return 0 if all(step() == 0 for step in steps) else 1
    finally:
        rknn.release()


if __name__ == "__main__" and sys.argv[1:2] == ["hybrid-step1"]:
    sys.exit(hybrid_step1_main(json.loads(sys.argv[2])))
