"""The inference contexts. A context is load(core) once, run(tensor) per frame, release() at the end;
the pipeline gives each its own thread, and nothing else in the runtime knows which runtime is behind
it. Each takes the letterboxed uint8 RGB NHWC frame, as the .rknn does (it normalises inside)."""
import sys
from pathlib import Path

import numpy as np

from .bundle import NPU_CORES, Bundle, check_layout, older_runtime_warning
from .errors import BadInput


class RknnLiteBackend:
    """rknn-toolkit-lite2 on the NPU: one RKNNLite context bound to one NPU core."""

    def __init__(self, model: Path, bundle: Bundle):
        self.model, self.bundle, self.core, self.rknn, self.runtime = model, bundle, None, None, ""
        self.version = None  # the runtime's version as it says it, None when it does not

    def load(self, core_id: int) -> None:
        try:
            from rknnlite.api import RKNNLite
        except ImportError as e:
            raise BadInput(f"rknn-toolkit-lite2 is not installed ({e}); on the board: pip3 install "
                           f"rknn-toolkit-lite2=={self.bundle.toolkit_version} (on a PC use --backend onnx)") from e
        masks = [RKNNLite.NPU_CORE_0, RKNNLite.NPU_CORE_1, RKNNLite.NPU_CORE_2]
        self.core, self.rknn = core_id, RKNNLite()
        kwargs = {"core_mask": masks[core_id]} if self.bundle.platform in NPU_CORES else {}
        if self.rknn.load_rknn(str(self.model)) != 0 or self.rknn.init_runtime(**kwargs) != 0:
            raise BadInput(f"cannot load {self.model} on NPU core {core_id}; is this an {self.bundle.platform} "
                           f"with the RKNN runtime (librknnrt.so {self.bundle.toolkit_version} or newer) installed?")
        try:
            self.version = " ".join(str(self.rknn.get_sdk_version()).split())
        except Exception:  # an old runtime without the call: nothing to compare
            self.version = None
        self.runtime = f"librknnrt {'unknown' if self.version is None else self.version}"

    def run(self, tensor: np.ndarray) -> list:
        return self.rknn.inference(inputs=[tensor], data_format="nhwc")

    def release(self) -> None:
        if self.rknn is not None:
            self.rknn.release()


class OnnxBackend:
    """onnxruntime on the CPU with the float ONNX model the .rknn was built from, on one thread per
    context (the CPU's stand-in for one NPU core): the pipeline runs unchanged on a PC."""

    def __init__(self, model: Path, bundle: Bundle):
        self.model, self.core, self.session, self.runtime = model, None, None, ""
        self.version = None  # no RKNN runtime to check

    def load(self, core_id: int) -> None:
        try:
            import onnxruntime as ort
        except ImportError as e:
            raise BadInput(f"--backend onnx needs onnxruntime ({e}); pip3 install onnxruntime") from e
        options = ort.SessionOptions()
        options.intra_op_num_threads = options.inter_op_num_threads = 1
        try:
            self.session = ort.InferenceSession(str(self.model), options, providers=["CPUExecutionProvider"])
        except Exception as e:
            raise BadInput(f"onnxruntime cannot load {self.model} ({type(e).__name__}); --backend onnx takes the "
                           f"bundle's .onnx (the model the .rknn was built from)") from e
        self.core, self.input = core_id, self.session.get_inputs()[0].name
        self.runtime = f"onnxruntime {ort.__version__}"

    def run(self, tensor: np.ndarray) -> list:
        # uint8 NHWC -> the float NCHW in [0, 1] the ONNX model takes: exactly what the .rknn computes inside
        x = np.ascontiguousarray(tensor.transpose(0, 3, 1, 2), dtype=np.float32) / 255.0
        return self.session.run(None, {self.input: x})

    def release(self) -> None:
        self.session = None


BACKENDS = {"rknn": RknnLiteBackend, "onnx": OnnxBackend}


class TiledContext:
    """The contexts of one frame's tiles (--tiles), seen by the pipeline as one context: run() gives
    tile i to context i, all at once, each on its own NPU core, and returns each tile's outputs. A
    frame then costs about one tile's NPU time, not the sum of them."""

    def __init__(self, contexts: list):
        from concurrent.futures import ThreadPoolExecutor
        self.contexts, self.runtime = contexts, contexts[0].runtime
        self.core = [ctx.core for ctx in contexts]
        self.pool = ThreadPoolExecutor(max_workers=len(contexts), thread_name_prefix="tile")

    def run(self, tensors: np.ndarray) -> list:
        jobs = [self.pool.submit(ctx.run, tensors[i:i + 1]) for i, ctx in enumerate(self.contexts)]
        return [job.result() for job in jobs]

    def release(self) -> None:
        self.pool.shutdown(wait=True)
        for ctx in self.contexts:
            ctx.release()


def load_contexts(backend: str, model: Path, cores: list[int], bundle: Bundle) -> list:
    """One context per core, each run once on a blank frame: that checks the model's output layout
    before any frame is read, and keeps first-run set-up out of the measured latencies. The runtime's
    version is checked on the first context alone: every context of a process shares one runtime, so
    the warning comes once, not once per context."""
    contexts = []
    try:
        for c in cores:
            ctx = BACKENDS[backend](model, bundle)
            contexts.append(ctx)
            ctx.load(c)
            warning = older_runtime_warning(ctx.version, bundle.toolkit_version) if len(contexts) == 1 else None
            if warning:
                print(warning, file=sys.stderr)
            check_layout(bundle.layout, bundle.size, ctx.run(np.full((1, *bundle.size, 3), 114, np.uint8)))
    except BaseException:
        for ctx in contexts:
            ctx.release()
        raise
    return contexts
