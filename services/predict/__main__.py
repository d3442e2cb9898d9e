"""Detections drawn on your own images or video by any model format (`make predict`).

    python -m services.predict --config configs/<exp>.yaml --source IMAGE|FOLDER|VIDEO [--format pt|onnx|rknn]
                               [--conf 0.25] [--experiment NAME] [section.key=value ...]

Writes artifacts/<exp>/predict/<format>/: each image with its boxes drawn (same file name), or the
video as <name>.mp4 with boxes drawn, and detections.json (boxes and scores in original pixels).
The model, the letterbox and the decode are the evaluator's, so the boxes are the evaluation's.
rknn runs in rknn-toolkit2's simulator (convert environment); the others in the train environment.
"""
import argparse
import sys

from services.common import config
from services.common.cli import clean_up_after_killed_runs
from services.common.log import UserError, user_errors

from . import predict


def main(argv=None) -> None:
    p = argparse.ArgumentParser(prog="python -m services.predict", description=__doc__.strip().splitlines()[0])
    p.add_argument("--config", required=True, help="configs/<exp>.yaml")
    p.add_argument("--experiment", metavar="NAME",
                   help="the folder name under artifacts/ (default: the config file's name)")
    p.add_argument("--source", required=True, help="an image, a folder of images or a video file")
    p.add_argument("--format", default="pt", choices=predict.FORMATS, help="which model runs it (default pt)")
    p.add_argument("--conf", type=float, default=predict.DISPLAY_CONF,
                   help=f"score threshold for what is drawn and listed (default {predict.DISPLAY_CONF}; the "
                        f"evaluation keeps everything above evaluate.conf=0.001, which is for AP, not for looking)")
    p.add_argument("overrides", nargs="*", metavar="section.key=value")
    # intermixed: Make appends ARGS after --format, and ARGS may hold --conf as well as overrides
    a = p.parse_intermixed_args(sys.argv[1:] if argv is None else argv)
    with user_errors(predict.STAGE):
        if not 0 < a.conf < 1:
            raise UserError(f"--conf {a.conf} must be between 0 and 1 (exclusive), e.g. --conf 0.25")
        cfg = config.load(a.config, a.overrides, a.experiment)
        clean_up_after_killed_runs(predict.STAGE, cfg)
        predict.run(cfg, a.source, a.format, a.conf)


if __name__ == "__main__":
    main()
