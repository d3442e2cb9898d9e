"""Ultralytics, kept offline and inside the project. Importing `services` points its settings into the
project (point_into_project); call `prepare()` before using ultralytics for the rest.

Left alone, ultralytics probes DNS at import, fetches a font when it checks a dataset, pip-installs
packages at run time and keeps its settings in the home directory (../shared/notes/ml-stack-facts.md).
Here its settings live in <project>/.yolo (YOLO_CONFIG_DIR), TensorBoard logging is on, and nothing
touches the network unless a stage asks for a download on purpose.
"""
import os
import random
import shutil
import struct
from pathlib import Path

from .paths import ROOT


def config_dir(root: Path = ROOT) -> Path:
    """<project>/.yolo. In a container the project folder is not writable by the invoking user: the
    image points this at a scratch folder (PIPELINE_YOLO_DIR, Dockerfile.train)."""
    return Path(os.environ.get("PIPELINE_YOLO_DIR") or Path(root) / ".yolo")


def point_into_project(root: Path = ROOT) -> None:
    """YOLO_CONFIG_DIR, which ultralytics reads once, when it is first imported (its settings.json
    and downloaded fonts live there). services/__init__.py calls this, so it happens before any
    stage can import ultralytics, however indirectly (torch.load of a checkpoint imports it)."""
    os.environ["YOLO_CONFIG_DIR"] = str(config_dir(root))


def prepare(root: Path = ROOT, allow_downloads: bool = False) -> None:
    user_dir = config_dir(root) / "Ultralytics"  # ultralytics appends this to YOLO_CONFIG_DIR
    user_dir.mkdir(parents=True, exist_ok=True)
    point_into_project(root)
    os.environ["YOLO_AUTOINSTALL"] = "0"
    if not allow_downloads:
        os.environ["YOLO_OFFLINE"] = "1"
    # The plotting font ultralytics would download: matplotlib ships an equivalent one.
    font = user_dir / "Arial.ttf"
    if not font.exists():
        import matplotlib
        shutil.copyfile(Path(matplotlib.get_data_path()) / "fonts" / "ttf" / "DejaVuSans.ttf", font)
    # Settings are written each time, not inherited from an earlier session or another project.
    from ultralytics.utils import SETTINGS
    SETTINGS.update({"sync": False, "tensorboard": True, "wandb": False, "mlflow": False,
                     "clearml": False, "comet": False, "dvc": False, "raytune": False,
                     "runs_dir": str(Path(root) / "runs"),
                     "weights_dir": str(Path(root) / "datasets" / "weights"),
                     "datasets_dir": str(Path(root) / "datasets")})


# ultralytics' check_cache_ram wants twice the cache's bytes available, else it trains uncached
# (with a warning in the middle of its log): the stage and the doctor say so first.
RAM_CACHE_FACTOR = 2.0


def ram_cache_need(train: dict, images: list[Path], processes: int = 1) -> int | None:
    """The free memory ultralytics' `cache: ram` wants for these training images (with its margin, in
    every training process), or None when the train section asks for no RAM cache."""
    if (train.get("extra") or {}).get("cache") not in (True, "ram"):
        return None
    return int(ram_cache_bytes(images, int(train["imgsz"])) * processes * RAM_CACHE_FACTOR)


def ram_cache_bytes(images: list[Path], imgsz: int) -> int:
    """The bytes ultralytics' `cache: ram` holds for these training images: each resized so that its
    long side is imgsz, 3 bytes per pixel; sizes from the PNG headers of up to 30 of them."""
    if not images:
        return 0
    sample = random.Random(0).sample(images, min(30, len(images)))
    total = 0
    for p in sample:
        with open(p, "rb") as f:
            head = f.read(24)
        w, h = struct.unpack(">II", head[16:24]) if head[12:16] == b"IHDR" else (2048, 1024)
        r = imgsz / max(w, h)
        total += round(w * r) * round(h * r) * 3
    return int(total / len(sample) * len(images))


def available_memory() -> int:
    """MemAvailable from /proc/meminfo (a container sees the host's), in bytes; 0 when unknown."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0
