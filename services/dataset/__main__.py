"""Dataset stage.

    python -m services.dataset --config configs/<exp>.yaml [--force] [dataset.key=value ...]
    python -m services.dataset demo [--out datasets/demo/raw] [--seed 0] [--force]

The first turns datasets/<name>/raw/ into datasets/<name>/yolo/ (see citypersons.py); with
dataset.generate_demo it first generates the raw demo download when it is absent or was made by
another generator version or seed. The second only generates the demo download.
"""
import argparse
import sys

from services.common import config, paths
from services.common.log import user_errors

from . import citypersons, demo

STAGE = "dataset"


def main(argv=None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    with user_errors(STAGE):
        if argv[:1] == ["demo"]:
            p = argparse.ArgumentParser(prog="python -m services.dataset demo",
                                        description="Generate the embedded demo download.")
            p.add_argument("--out", default=str(paths.raw_dir("demo")))
            p.add_argument("--seed", type=int, default=0)
            p.add_argument("--force", action="store_true", help="generate anew; the old one is moved aside")
            a = p.parse_args(argv[1:])
            demo.main(a.out, a.seed, a.force)
            return
        p = argparse.ArgumentParser(prog="python -m services.dataset",
                                    description="Build the YOLO dataset for an experiment.")
        p.add_argument("--config", required=True, help="configs/<exp>.yaml")
        p.add_argument("--force", action="store_true", help="rebuild even if the output is up to date")
        p.add_argument("overrides", nargs="*", metavar="section.key=value")
        a = p.parse_args(argv)
        cfg = config.load(a.config, a.overrides)
        d = cfg["dataset"]
        if d["generate_demo"]:
            demo.ensure(paths.raw_dir(d["name"]), d["seed"])
        citypersons.convert(cfg, force=a.force)


if __name__ == "__main__":
    main()
