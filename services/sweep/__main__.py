"""Sweep engine (`make sweep SWEEP=<name>`).

    python -m services.sweep configs/sweeps/<name>.yaml [section.key=value ...]
    python -m services.sweep --plan configs/sweeps/<name>.yaml     # what it would run; starts nothing

Runs every (variant, seed) trial of the sweep file as a whole chain on Ray (a local instance, or the
cluster at RAY_ADDRESS), skips trials a previous run finished, and ends with one table. Exit 1 when
any trial failed, 2 on bad input (nothing started). `--plan` (Make's PLAN=1) prints every trial, the
datasets, the stages and an estimate of each training's time, and starts nothing (services/sweep/plan.py).
"""
import argparse
import sys

from services.common.log import user_errors

from . import plan, sweep

if __name__ == "__main__":
    p = argparse.ArgumentParser(prog="python -m services.sweep", description=__doc__.strip().splitlines()[0])
    p.add_argument("file", help="configs/sweeps/<name>.yaml")
    p.add_argument("overrides", nargs="*", metavar="section.key=value", help="for every trial, after the file's")
    p.add_argument("--plan", action="store_true", help="print the trials and a training-time estimate; start nothing")
    p.add_argument("--trials", default="", help="only these trials, <variant>-s<seed>, comma-separated (Make: TRIALS=)")
    a = p.parse_args()
    with user_errors(sweep.STAGE):
        only = [t.strip() for t in a.trials.split(",") if t.strip()]
        sys.exit((plan.run if a.plan else sweep.run)(a.file, a.overrides, only=only))
