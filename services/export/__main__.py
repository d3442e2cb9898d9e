"""Export stage (`make export`).

    python -m services.export --config configs/<exp>.yaml [export.key=value ...]

artifacts/<exp>/weights/best.pt -> artifacts/<exp>/models/<exp>.onnx and <exp>.rknn-head.onnx, with
parity against PyTorch in metrics/export.json (see export.py for the output names and shapes).
`make export` then evaluates both ONNX models with onnxruntime.
"""
import argparse
import sys

from services.common import config
from services.common.log import user_errors

from . import export


def main(argv=None) -> None:
    p = argparse.ArgumentParser(prog="python -m services.export", description=__doc__.splitlines()[0])
    p.add_argument("--config", required=True, help="configs/<exp>.yaml")
    p.add_argument("--force", action="store_true", help="export again even if the models are up to date")
    p.add_argument("overrides", nargs="*", metavar="section.key=value")
    a = p.parse_args(sys.argv[1:] if argv is None else argv)
    with user_errors(export.STAGE):
        export.run(config.load(a.config, a.overrides), force=a.force)


if __name__ == "__main__":
    main()
