"""Where things live. Every path is under the project root, so the same layout works natively
(RUNNER=local) and inside the containers, which mount datasets/, artifacts/ and runs/ at /workspace."""
import os
from pathlib import Path

# Tests run stages against a scratch copy of the layout by setting PIPELINE_ROOT.
ROOT = Path(os.environ.get("PIPELINE_ROOT", Path(__file__).resolve().parents[2])).resolve()


def offline() -> bool:
    """OFFLINE=1 (Make passes it to every stage as PIPELINE_OFFLINE=1): no stage touches the network,
    neither for a dataset nor for weights; what is missing is named with where to put it."""
    return os.environ.get("PIPELINE_OFFLINE", "0") == "1"


def dataset_dir(name: str, root: Path = ROOT) -> Path:
    return Path(root) / "datasets" / name


def raw_dir(name: str, root: Path = ROOT) -> Path:
    return dataset_dir(name, root) / "raw"


def yolo_dir(name: str, root: Path = ROOT) -> Path:
    return dataset_dir(name, root) / "yolo"


def artifacts_dir(exp: str, root: Path = ROOT) -> Path:
    return Path(root) / "artifacts" / exp


def runs_dir(exp: str, root: Path = ROOT) -> Path:
    return Path(root) / "runs" / exp


def rel(path: Path, root: Path = ROOT) -> str:
    """A path as users see it in messages and in files meant to move between machines."""
    try:
        return str(Path(os.path.abspath(path)).relative_to(Path(root)))
    except ValueError:
        return str(path)


def stage_folders(cfg: dict, root: Path = ROOT) -> list[Path]:
    """Every folder an experiment's stages write into (where their temporary files live)."""
    sets = ["coco"] if "coco_person" in cfg["evaluate"]["sets"] else []
    return ([dataset_dir(name, root) for name in [cfg["dataset"]["name"], *sets]]
            + [artifacts_dir(cfg["experiment"], root), runs_dir(cfg["experiment"], root)])


# The folders each stage creates files in or replaces, below artifacts/<exp> and runs/<exp> (the
# dataset stage: datasets/<name>/yolo). Each must be writable before the stage starts (common/space.py).
ARTIFACTS_WRITTEN = {"fit": ["weights", "train"], "export": ["models", "metrics"], "evaluate": ["metrics"],
                     "convert": ["models", "metrics", "rknn", "board"]}
RUNS_WRITTEN = {"fit": ["", "train", "train/weights"]}


def written_by(stage: str, cfg: dict, root: Path = ROOT) -> list[Path]:
    """Every folder `stage` writes for this experiment, outermost first. artifacts/<exp> is always
    one: the experiment's lock lives there."""
    art, runs = artifacts_dir(cfg["experiment"], root), runs_dir(cfg["experiment"], root)
    out = [art] + [runs / sub for sub in RUNS_WRITTEN.get(stage, [])]
    out += [art / sub for sub in ARTIFACTS_WRITTEN.get(stage, [])]
    if stage == "dataset":
        sets = ["coco"] if "coco_person" in cfg["evaluate"]["sets"] else []
        for name in [cfg["dataset"]["name"], *sets]:
            out += [dataset_dir(name, root), yolo_dir(name, root)]
    return out
