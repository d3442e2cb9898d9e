"""Evaluation stage (`make evaluate`).

    python -m services.evaluate --config configs/<exp>.yaml [evaluate.format=pt|onnx] [evaluate.weights=PATH]

Evaluates every model format that exists so far (or the one asked for) on the evaluation sets with
pycocotools COCO AP and the official CityPersons miss rate, and writes artifacts/<exp>/metrics/.
"""
from services.common.cli import stage_main

from . import evaluate

if __name__ == "__main__":
    stage_main("evaluate", __doc__, evaluate.STAGE, evaluate.run)
