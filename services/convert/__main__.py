"""RKNN conversion stage (`make rknn`; convert environment).

    python -m services.convert --config configs/<exp>.yaml [convert.key=value ...]

The rknn-head ONNX -> an INT8 (or fp16) .rknn for the platform, its quantization report, its
evaluation in the RKNN simulator (metrics/rknn.json, a row in summary.md) and the board bundle.
"""
import argparse
import sys

from services.common import config
from services.common.log import user_errors

from . import convert


def main(argv=None) -> None:
    p = argparse.ArgumentParser(prog="python -m services.convert", description=__doc__.splitlines()[0])
    p.add_argument("--config", required=True, help="configs/<exp>.yaml")
    p.add_argument("--force", action="store_true", help="accepted for symmetry: the build always reruns")
    p.add_argument("overrides", nargs="*", metavar="section.key=value")
    a = p.parse_args(sys.argv[1:] if argv is None else argv)
    with user_errors(convert.STAGE):
        convert.run(config.load(a.config, a.overrides), force=a.force)


if __name__ == "__main__":
    main()
