"""Dataset stage (`make dataset`): build the YOLO dataset for an experiment.

    python -m services.dataset --config configs/<exp>.yaml [--force] [dataset.key=value ...]
    python -m services.dataset demo [--out datasets/demo/raw] [--seed 0] [--force]
    python -m services.dataset proxy [--out datasets/proxy/raw] [--annotations DIR] [--seed 0]
                                     [--train N] [--val N] [--force]

The first prepares every dataset the experiment uses: the training dataset, datasets/<name>/raw/ ->
datasets/<name>/yolo/ (see citypersons.py), and each evaluation set evaluate.sets names beyond it
(coco_person: datasets/coco/, see coco.py). Missing public files are downloaded first, unless
PIPELINE_OFFLINE=1 (Make: OFFLINE=1); every file the user must fetch by hand gets one error line,
all of them before any conversion. With dataset.generate_demo the raw demo download is generated
instead when it is absent or was made by another generator version or seed; with
dataset.generate_proxy the CityPersons-scale proxy (proxy.py), from the real .mat files in
dataset.proxy_annotations, the same way. The second and third only generate those downloads.
"""
import argparse
from pathlib import Path

from services.common import config, paths, space
from services.common.cli import stage_main
from services.common.log import info

from . import citypersons, coco, demo, download, proxy

STAGE = "dataset"


def main(argv=None) -> None:
    stage_main("dataset", __doc__, STAGE, prepare, argv, force_help="rebuild even if the output is up to date",
               subcommands={"demo": demo_main, "proxy": proxy_main})


def demo_main(argv: list[str]) -> None:
    p = argparse.ArgumentParser(prog="python -m services.dataset demo",
                                description="Generate the embedded demo download.")
    p.add_argument("--out", default=str(paths.raw_dir("demo")))
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--force", action="store_true", help="generate anew; the old one is moved aside")
    a = p.parse_args(argv)
    demo.main(a.out, a.seed, a.force)


def proxy_main(argv: list[str]) -> None:
    d = config.defaults()["dataset"]
    p = argparse.ArgumentParser(
        prog="python -m services.dataset proxy",
        description="Generate the CityPersons-scale proxy: the demo's figures in 2048x1024 frames at "
                    "the real boxes of the real CityPersons annotation files.")
    p.add_argument("--out", default=str(paths.raw_dir("proxy")))
    p.add_argument("--annotations", default=str(proxy_annotations(d["proxy_annotations"])),
                   metavar="DIR", help="the folder holding the real anno_train.mat and anno_val.mat")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--train", type=int, default=d["proxy_train_images"], metavar="N",
                   help="images drawn from anno_train.mat")
    p.add_argument("--val", type=int, default=d["proxy_val_images"], metavar="N",
                   help="images drawn from anno_val.mat")
    p.add_argument("--force", action="store_true", help="generate anew; the old one is moved aside")
    a = p.parse_args(argv)
    proxy.main(a.out, a.annotations, a.seed, a.train, a.val, a.force)


def prepare(cfg: dict, force: bool = False, root=paths.ROOT) -> None:
    d = cfg["dataset"]
    want_coco = "coco_person" in cfg["evaluate"]["sets"]
    online = not download.offline()
    if not online:
        info(STAGE, "offline (OFFLINE=1): nothing is downloaded")
    # Everything that must be fetched first, so one run lists all a user has to do by hand.
    problems = []
    if (d["generate_demo"] or d["generate_proxy"]) and not paths.raw_dir(d["name"], root).exists():
        space.require(STAGE, space.dataset_need(cfg, root))  # the download is generated first
    if d["generate_demo"]:
        demo.ensure(paths.raw_dir(d["name"], root), d["seed"])
    elif d["generate_proxy"]:
        proxy.ensure(paths.raw_dir(d["name"], root), proxy_annotations(d["proxy_annotations"], root),
                     d["seed"], d["proxy_train_images"], d["proxy_val_images"])
    else:
        problems += citypersons.fetch(cfg, root, online)
    if want_coco:
        problems += coco.fetch(cfg, root, online)
    if problems:
        download.give_up(problems)
    citypersons.convert(cfg, root=root, force=force)
    if want_coco:
        coco.build(cfg, root=root, force=force)


def proxy_annotations(folder: str, root=paths.ROOT) -> Path:
    """dataset.proxy_annotations: absolute, or relative to the project root."""
    return Path(root) / Path(folder).expanduser()


if __name__ == "__main__":
    main()
