"""Where things live. Every path is under the project root, so the same layout works natively
(RUNNER=local) and inside the containers, which mount datasets/, artifacts/ and runs/ at /workspace."""
import os
from pathlib import Path

# Tests run stages against a scratch copy of the layout by setting PIPELINE_ROOT.
ROOT = Path(os.environ.get("PIPELINE_ROOT", Path(__file__).resolve().parents[2])).resolve()


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
