"""Does the input pipeline keep a GPU busy? ultralytics' own training dataloader on CityPersons-scale
2048x1024 PNGs (the proxy), in images per second per worker, for each way of feeding it.

    python benchmarks/input_pipeline.py [--root DIR] [--images 500] [--imgsz 640] [--passes 1]

- none: every image decoded from its 2048x1024 PNG and resized, every epoch;
- ram:  ultralytics' `cache: ram`, images decoded and resized once, kept in memory;
- disk: ultralytics' `cache: disk`, resized copies saved once as .npy beside the images in
        datasets/<name>/yolo/ (derived data: deleted with yolo/, rebuilt by the first training).

One worker (workers=0: the loading runs in this process), the training augmentation (mosaic, HSV,
flips) on, batches of 16. The one-off caching time is shown apart from the per-epoch throughput.
The bar: the thesis default (ram) delivers >= 4x the images/s of `none` per worker. A proxy of
--images train frames is generated under --root (a scratch folder) first.
"""
import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from services.common import config  # noqa: E402
from services.common.log import table  # noqa: E402

BAR = 4.0
DEFAULT = "disk"  # configs/citypersons.yaml: train.extra.cache
SHARED = ROOT.parent / "shared" / "data" / "citypersons"


def proxy_dataset(root: Path, images: int, annotations: Path) -> Path:
    """datasets/proxy/yolo/ under root, generated and converted by the real dataset stage."""
    os.environ["PIPELINE_ROOT"] = str(root)
    from services.dataset.__main__ import prepare
    cfg = config.load(str(ROOT / "configs" / "proxy.yaml"),
                      [f"dataset.proxy_annotations={annotations}", f"dataset.proxy_train_images={images}",
                       "dataset.proxy_val_images=4", "dataset.calib_images=2", "dataset.selection_fraction=0"])
    prepare(cfg, root=root)
    return root / "datasets" / "proxy" / "yolo"


def measure(yolo: Path, cache, imgsz: int, passes: int, batch: int = 16) -> dict:
    """Build ultralytics' training dataset and dataloader as its trainer does; time the caching and
    then `passes` epochs of loading."""
    from ultralytics.cfg import get_cfg
    from ultralytics.data import build_dataloader, build_yolo_dataset
    from ultralytics.data.utils import check_det_dataset

    for npy in (yolo / "train" / "images").glob("*.npy"):  # every mode starts from the PNGs alone
        npy.unlink()
    cfg = get_cfg(overrides={"imgsz": imgsz, "cache": cache or False, "workers": 0, "batch": batch,
                             "data": str(yolo / "proxy.yaml"), "verbose": False})
    data = check_det_dataset(str(yolo / "proxy.yaml"))
    t0 = time.perf_counter()
    dataset = build_yolo_dataset(cfg, str(yolo / "train" / "images"), batch, data, mode="train")
    setup_s = time.perf_counter() - t0
    loader = build_dataloader(dataset, batch, workers=0, shuffle=True, device="cpu")
    for i, _ in enumerate(loader):  # warm-up: first-call costs (imports, buffers) are not an epoch's
        if i == 1:
            break
    n, t0 = 0, time.perf_counter()
    for _ in range(passes):
        for b in loader:
            n += len(b["im_file"])
    seconds = time.perf_counter() - t0
    return {"cache": cache or "none", "images": n, "setup_s": setup_s, "seconds": seconds, "per_s": n / seconds}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--root", help="scratch project root for the proxy (default: a temporary folder)")
    p.add_argument("--images", type=int, default=500,
                   help="proxy train frames (well above ultralytics' mosaic buffer of 8 batches, which would cache)")
    p.add_argument("--imgsz", type=int, default=640)
    p.add_argument("--passes", type=int, default=1, help="epochs of loading timed per mode")
    p.add_argument("--annotations", default=str(SHARED), help="the real anno_train.mat and anno_val.mat")
    a = p.parse_args(argv)
    if not (Path(a.annotations) / "anno_train.mat").is_file():
        print(f"input_pipeline: error: no anno_train.mat in {a.annotations}; give --annotations DIR", file=sys.stderr)
        return 2
    root = Path(a.root or tempfile.mkdtemp(prefix="input-pipeline-"))
    try:
        yolo = proxy_dataset(root, a.images, Path(a.annotations).resolve())
        rows = [measure(yolo, cache, a.imgsz, a.passes) for cache in (None, "disk", "ram")]
    finally:
        if not a.root:
            shutil.rmtree(root, ignore_errors=True)
    base = rows[0]["per_s"]
    print(table(["cache", "images", "one-off caching s", "images/s per worker", "x none"],
                [[r["cache"], r["images"], f"{r['setup_s']:.1f}", f"{r['per_s']:.1f}", f"{r['per_s'] / base:.2f}"]
                 for r in rows],
                title=f"\nultralytics' training dataloader, {a.images} proxy frames of 2048x1024, imgsz {a.imgsz}, "
                      f"one worker (workers=0), augmentation on"))
    chosen = next(r for r in rows if r["cache"] == DEFAULT)
    ok = chosen["per_s"] >= BAR * base
    print(f"\nbar: the default ({DEFAULT}) >= {BAR:.0f}x the uncached images/s per worker: "
          f"{chosen['per_s'] / base:.2f}x {'ok' if ok else 'MISSED'}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
