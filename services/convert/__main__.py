"""RKNN conversion stage (`make convert`; convert environment).

    python -m services.convert --config configs/<exp>.yaml [convert.key=value ...]

The rknn-head ONNX -> an INT8 (or fp16) .rknn for the platform, its quantization report, its
evaluation in the RKNN simulator (metrics/rknn.json, a row in summary.md) and the board bundle.
"""
from services.common.cli import stage_main

from . import convert

if __name__ == "__main__":
    stage_main("convert", __doc__, convert.STAGE, convert.run)
