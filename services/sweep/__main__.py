"""Sweep engine (`make sweep SWEEP=<name>`).

    python -m services.sweep configs/sweeps/<name>.yaml [section.key=value ...]

Runs every (variant, seed) trial of the sweep file as a whole chain on Ray (a local instance, or the
cluster at RAY_ADDRESS), skips trials a previous run finished, and ends with one table. Exit 1 when
any trial failed, 2 on bad input (nothing started).
"""
import argparse
import sys

from services.common.log import user_errors

from . import sweep

if __name__ == "__main__":
    p = argparse.ArgumentParser(prog="python -m services.sweep", description=__doc__.strip().splitlines()[0])
    p.add_argument("file", help="configs/sweeps/<name>.yaml")
    p.add_argument("overrides", nargs="*", metavar="section.key=value", help="for every trial, after the file's")
    a = p.parse_args()
    with user_errors(sweep.STAGE):
        sys.exit(sweep.run(a.file, a.overrides))
