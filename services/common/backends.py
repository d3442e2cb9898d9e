"""Every model format behind one interface: the PyTorch checkpoint, ONNX (either head) and the RKNN
simulator. Evaluate, predict, export and the board script's `--backend onnx` all run a model through
here, so a format is loaded, pre-processed and its one-to-one head chosen in one place.

A backend maps a (n, 3, h, w) float batch in 0..1 to its raw outputs, a list of arrays with batch n,
in the output layout (decode.LAYOUTS) its `layout` names. `batch_ok` says whether n may exceed 1;
`device` says what ran it, for the manifests. Each backend's library is imported when it is used:
this module is imported in the train environment (torch, onnxruntime) and in the convert environment
(rknn-toolkit2, numpy 1.26, no ultralytics).
"""
import os
from pathlib import Path

import numpy as np

from . import decode, manifest, paths
from .log import MEND_WEIGHTS, UserError, reading

FORMATS = ("pt", "onnx", "rknn")


def load_checkpoint(weights: Path, max_det: int = 300, what: str = "a YOLO PyTorch checkpoint",
                    fix: str = MEND_WEIGHTS):
    """A YOLO checkpoint as a fused eval module, and whether it runs through a one-to-one head.

    A model with a one-to-one head (YOLO26) is run through it: NMS-free, as it was trained to be
    deployed (ultralytics' `nms=False`). That is chosen before fuse(), which drops the other branch."""
    import torch
    with reading(weights, what, fix):
        ckpt = torch.load(weights, map_location="cpu", weights_only=False)
        model = (ckpt.get("ema") or ckpt["model"]).float()
    detect = model.model[-1] if hasattr(model, "model") else None
    end2end = getattr(detect, "one2one_cv2", None) is not None
    if end2end:
        model.end2end, detect.max_det = True, max_det
    return (model.fuse().eval() if hasattr(model, "fuse") else model.eval()), end2end


class TorchBackend:
    """The PyTorch checkpoint run as a plain module: its raw head output goes through decode.postprocess,
    like every other format (ultralytics' own predictor would post-process differently). A one-to-one
    head's output is read as layout end2end (the head's own top-k), as its ONNX models are."""

    name, batch_ok, layout = "pt", True, "standard"

    def __init__(self, weights: Path, max_det: int = 300):
        import torch
        self.model, end2end = load_checkpoint(weights, max_det, fix=fix_for(weights, "pt"))
        self.layout = "end2end" if end2end else "standard"
        self.torch = torch
        self.device = manifest.cpu_name()
        torch.set_num_threads(os.cpu_count() or 1)

    def __call__(self, x: np.ndarray) -> list[np.ndarray]:
        with self.torch.inference_mode():
            y = self.model(self.torch.from_numpy(x))
        return [(y[0] if isinstance(y, (list, tuple)) else y).numpy()]


class OnnxBackend:
    name, batch_ok = "onnx", False  # exported with a static batch of 1

    def __init__(self, weights: Path):
        import onnxruntime as ort
        with reading(weights, "an ONNX model", fix_for(weights, "onnx")):
            self.session = ort.InferenceSession(str(weights), providers=["CPUExecutionProvider"])
        first = self.session.get_inputs()[0]
        self.input, self.size = first.name, tuple(first.shape[2:])
        try:
            self.layout = decode.layout_of([o.shape for o in self.session.get_outputs()], self.size)
        except (ValueError, TypeError) as e:
            raise UserError(f"{paths.rel(weights)}: {e}; export it again with `make export FORCE=1`")
        self.device = f"onnxruntime CPU ({manifest.cpu_name()})"

    def __call__(self, x: np.ndarray) -> list[np.ndarray]:
        return self.session.run(None, {self.input: x})


class RknnSimBackend:
    """The RKNN simulator, on a model built in this process (services/common/toolkit.py): it takes
    letterboxed uint8 RGB NHWC and normalises it itself (mean 0, std 255, set at build time)."""

    name, batch_ok = "rknn", False

    def __init__(self, rknn, size, layout: str):
        self.rknn, self.size, self.layout = rknn, size, layout
        self.device = f"rknn-toolkit2 simulator on x86_64 ({manifest.cpu_name()})"
        self.max_score = 0.0

    def __call__(self, x: np.ndarray) -> list[np.ndarray]:
        outputs = self.rknn.inference(inputs=[as_uint8_nhwc(x)], data_format="nhwc")
        scores = outputs[1::2] if self.layout in ("dfl", "distances", "one2one") else outputs[1:2]
        self.max_score = max([self.max_score] + [float(np.max(s)) for s in scores])
        return outputs


def as_uint8_nhwc(x: np.ndarray) -> np.ndarray:
    """The evaluator's (1, 3, h, w) float batch as the uint8 RGB image the NPU takes."""
    return np.rint(x[0].transpose(1, 2, 0) * 255).astype(np.uint8)[None]


def fix_for(weights: Path, fmt: str) -> str:
    """What mends an unreadable model: the stage that wrote it, or, for the user's own file, another file."""
    parts = Path(paths.rel(weights)).parts
    if parts[:1] == ("artifacts",) and len(parts) == 4 and parts[2] == ("weights" if fmt == "pt" else "models"):
        return MEND_WEIGHTS if fmt == "pt" else "`make export FORCE=1` writes it again"
    return f"set evaluate.weights to a readable {'YOLO .pt checkpoint' if fmt == 'pt' else '.onnx model'}"


def backend_for(fmt: str, weights: Path, max_det: int = 300):
    """The backend of a pt or onnx file (an rknn backend needs its model built: toolkit.Toolkit)."""
    if not weights.is_file():
        hint = "run `make fit`" if fmt == "pt" else "run `make export`"
        raise UserError(f"no {fmt} model at {paths.rel(weights)}; {hint} first, or set evaluate.weights=PATH")
    suffix = ".pt" if fmt == "pt" else ".onnx"
    if weights.suffix != suffix:
        raise UserError(f"evaluate.format={fmt} but {paths.rel(weights)} is not a {suffix} file; "
                        f"set evaluate.format to match the weights")
    backend = TorchBackend(weights, max_det) if fmt == "pt" else OnnxBackend(weights)
    backend.name = fmt
    return backend
