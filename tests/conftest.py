"""Shared fixtures. Stages run against scratch project roots (PIPELINE_ROOT), never the user's
datasets/, artifacts/ or runs/."""
import io
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import scipy.io

ROOT = Path(__file__).resolve().parents[1]
# The real CityPersons annotation files: beside the project in CI, absent on a user's machine.
SHARED_CITYPERSONS = ROOT.parent / "shared" / "data" / "citypersons"
needs_real_citypersons = pytest.mark.skipif(
    not (SHARED_CITYPERSONS / "anno_train.mat").is_file(),
    reason=f"real CityPersons annotations not found at {SHARED_CITYPERSONS}")

sys.path.insert(0, str(ROOT))


def run_module(module: str, args, root: Path, timeout=600) -> subprocess.CompletedProcess:
    """`python -m services.<module> ...` as a user runs it, with outputs under `root`."""
    return subprocess.run([sys.executable, "-m", f"services.{module}", *args], cwd=ROOT,
                          env={**os.environ, "PIPELINE_ROOT": str(root)}, capture_output=True,
                          text=True, timeout=timeout)


def error_lines(proc: subprocess.CompletedProcess) -> list[str]:
    return [line for line in proc.stderr.splitlines() if "error:" in line]


@pytest.fixture(scope="session")
def placeholder_png() -> bytes:
    """A valid, mostly empty 2048x1024 PNG, the size of a Cityscapes leftImg8bit image."""
    from PIL import Image
    buf = io.BytesIO()
    Image.new("RGB", (2048, 1024)).save(buf, format="PNG")
    return buf.getvalue()


def make_real_root(root: Path, png: bytes, shared: Path = SHARED_CITYPERSONS) -> Path:
    """A project root whose datasets/citypersons/raw/ holds the real .mat files and one placeholder
    PNG per annotated image, in the Cityscapes layout."""
    raw = root / "datasets" / "citypersons" / "raw"
    raw.mkdir(parents=True)
    for split in ("train", "val"):
        shutil.copyfile(shared / f"anno_{split}.mat", raw / f"anno_{split}.mat")
        for cell in scipy.io.loadmat(raw / f"anno_{split}.mat")[f"anno_{split}_aligned"].ravel():
            s = cell[0, 0]
            folder = raw / "leftImg8bit" / split / str(s["cityname"][0])
            folder.mkdir(parents=True, exist_ok=True)
            (folder / str(s["im_name"][0])).write_bytes(png)
    return root


@pytest.fixture(scope="session")
def demo_raw(tmp_path_factory) -> Path:
    """The default demo download, generated once per test session."""
    from services.dataset import demo
    out = tmp_path_factory.mktemp("demo-raw") / "raw"
    demo.generate(out, seed=0)
    return out


def demo_root(tmp_path: Path, demo_raw: Path) -> Path:
    """A project root with its own copy of the demo download (tests may damage it)."""
    shutil.copytree(demo_raw, tmp_path / "datasets" / "demo" / "raw")
    return tmp_path
