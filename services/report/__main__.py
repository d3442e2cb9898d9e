"""The report (`make report EXP=<exp>` or `make report SWEEP=<name>`).

    python -m services.report --config configs/<exp>.yaml [--experiment NAME] [--examples N] [--score S]
    python -m services.report --sweep <name> [--examples N] [--score S]

Reads what the stages wrote (metrics, detections, training curves), and the board reports copied back
into artifacts/<exp>/board-reports/, for one experiment, or for every trial of a sweep, and writes
artifacts/<NAME>/report/: report.md, report.html (one self-contained page), tables.tex (booktabs),
report.json and figures/*.pdf, *.png. Every figure is the mean and sample standard deviation over a
variant's seeds, with n.
"""
import argparse
import sys

from services.common import config
from services.common.log import user_errors

from . import report


def main(argv=None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    p = argparse.ArgumentParser(prog="python -m services.report", description=__doc__.strip().splitlines()[0])
    what = p.add_mutually_exclusive_group(required=True)
    what.add_argument("--config", help="configs/<exp>.yaml: report on that experiment's one run")
    what.add_argument("--sweep", metavar="NAME", help="report on every trial of the sweep (artifacts/NAME/sweep.json)")
    p.add_argument("--experiment", metavar="NAME",
                   help="with --config: the folder name under artifacts/ (default: the config file's name)")
    p.add_argument("--examples", type=int, default=3, metavar="N",
                   help="val images drawn with float and INT8 detections side by side (default 3; 0: none)")
    p.add_argument("--score", type=float, default=0.25, metavar="S",
                   help="the lowest detection score drawn on those images (default 0.25)")
    a = p.parse_args(argv)
    if a.experiment and a.sweep:
        p.error("--experiment goes with --config (a sweep names its trials' experiments itself)")
    if a.examples < 0 or not 0 <= a.score <= 1:
        p.error("--examples must be 0 or more, and --score between 0 and 1")
    with user_errors(report.STAGE):
        if a.sweep:
            report.run_sweep(a.sweep, examples=a.examples, score=a.score)
        else:
            cfg = config.load(a.config, [], a.experiment)
            report.run_experiment(cfg, examples=a.examples, score=a.score)


if __name__ == "__main__":
    main()
