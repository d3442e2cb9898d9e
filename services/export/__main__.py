"""Export stage (`make export`).

    python -m services.export --config configs/<exp>.yaml [export.key=value ...]

artifacts/<exp>/weights/best.pt -> artifacts/<exp>/models/<exp>.onnx and <exp>.rknn-head.onnx, with
parity against PyTorch in metrics/export.json (see export.py for the output names and shapes).
`make export` then evaluates both ONNX models with onnxruntime.
"""
from services.common.cli import stage_main

from . import export

if __name__ == "__main__":
    stage_main("export", __doc__, export.STAGE, export.run)
