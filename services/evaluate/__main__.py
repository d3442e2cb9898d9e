"""Evaluation stage (`make evaluate`).

    python -m services.evaluate --config configs/<exp>.yaml [evaluate.format=pt|onnx] [evaluate.weights=PATH]

Evaluates every model format that exists so far (or the one asked for) on the evaluation sets with
pycocotools COCO AP and the official CityPersons miss rate, and writes artifacts/<exp>/metrics/.
"""
import argparse
import sys

from services.common import config
from services.common.log import user_errors

from . import evaluate


def main(argv=None) -> None:
    p = argparse.ArgumentParser(prog="python -m services.evaluate", description=__doc__.splitlines()[0])
    p.add_argument("--config", required=True, help="configs/<exp>.yaml")
    p.add_argument("--force", action="store_true", help="evaluate again even if the metrics are up to date")
    p.add_argument("overrides", nargs="*", metavar="section.key=value")
    a = p.parse_args(sys.argv[1:] if argv is None else argv)
    with user_errors(evaluate.STAGE):
        evaluate.run(config.load(a.config, a.overrides), force=a.force)


if __name__ == "__main__":
    main()
