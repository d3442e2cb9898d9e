"""Training stage (`make fit`).

    python -m services.train --config configs/<exp>.yaml [--fresh] [train.key=value ...]

Fine-tunes (or, with a model .yaml, trains from scratch) on datasets/<name>/yolo/, validating on
the selection split. An unfinished run in runs/<exp>/train/ is resumed; a finished one with the same
config is not retrained; --fresh (FRESH=1, or FORCE=1) starts anew and moves the old run aside.
"""
import argparse
import sys

from services.common import config
from services.common.log import user_errors

from . import fit


def main(argv=None) -> None:
    p = argparse.ArgumentParser(prog="python -m services.train", description=__doc__.splitlines()[0])
    p.add_argument("--config", required=True, help="configs/<exp>.yaml")
    p.add_argument("--fresh", "--force", action="store_true", dest="fresh",
                   help="start anew; the previous run is moved aside, never deleted")
    p.add_argument("overrides", nargs="*", metavar="section.key=value")
    a = p.parse_args(sys.argv[1:] if argv is None else argv)
    with user_errors(fit.STAGE):
        cfg = config.load(a.config, a.overrides)
        fit.run(cfg, fresh=a.fresh)


if __name__ == "__main__":
    main()
