"""Training stage (`make fit`).

    python -m services.fit --config configs/<exp>.yaml [--fresh] [train.key=value ...]

Fine-tunes (or, with a model .yaml, trains from scratch) on datasets/<name>/yolo/, validating on
the selection split. An unfinished run in runs/<exp>/train/ is resumed; a finished one with the same
config is not retrained; --fresh (FRESH=1, or FORCE=1) starts anew and moves the old run aside.
"""
from services.common.cli import stage_main

from . import fit


def main(argv=None) -> None:
    stage_main("fit", __doc__, fit.STAGE, lambda cfg, force: fit.run(cfg, fresh=force), argv,
               force_flags=("--fresh", "--force"),
               force_help="start anew; the previous run is moved aside, never deleted")


if __name__ == "__main__":
    main()
