"""Scoring speed: pycocotools vs faster-coco-eval on a COCO-scale synthetic result set, and the
CityPersons miss-rate evaluator on the real 500-image val ground truth.

    python benchmarks/eval_speed.py [--shared ../shared/data/citypersons] [--miss-rate-only]

Prints seconds per scorer and checks the two COCO libraries agree. Bar: the miss-rate evaluator
takes <= 0.7 s (best of 3) for the four setups on 500 images, for dets_fair and dets_weak (the
official script: 0.72 s here). Exit 1 if missed. `--miss-rate-only` skips the COCO timings (about a
minute on 2 cores) and times the miss rate alone; without the ground truth it then exits 2.
"""
import argparse
import contextlib
import io
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from services.evaluate import miss_rate  # noqa: E402

MR_BAR = 0.7


def synthetic_coco(n_images=5000, dets_per_image=100, seed=0):
    """A COCO-like person set: 1-15 ground-truth boxes per image, 100 detections per image of which
    some are jittered copies of the truth and the rest random."""
    rng = np.random.default_rng(seed)
    images, anns, dets = [], [], []
    for i in range(1, n_images + 1):
        images.append({"id": i, "width": 640, "height": 480, "file_name": f"{i:012d}.jpg"})
        n = int(rng.integers(1, 16))
        xy = rng.uniform(0, 560, (n, 2))
        wh = rng.uniform(8, 200, (n, 2))
        for b in np.concatenate([xy, wh], 1):
            anns.append({"id": len(anns) + 1, "image_id": i, "category_id": 1, "bbox": b.round(2).tolist(),
                         "area": float(b[2] * b[3]), "iscrowd": int(rng.random() < 0.02)})
        hits = np.concatenate([xy, wh], 1)[rng.random(n) < 0.8]
        hits = hits + rng.normal(0, 4, hits.shape)
        rand = np.concatenate([rng.uniform(0, 560, (dets_per_image - len(hits), 2)),
                               rng.uniform(8, 200, (dets_per_image - len(hits), 2))], 1)
        scores = np.concatenate([rng.uniform(0.3, 1, len(hits)), rng.uniform(0, 0.5, len(rand))])
        for b, s in zip(np.concatenate([hits, rand]), scores):
            dets.append({"image_id": i, "category_id": 1, "bbox": b.round(2).tolist(), "score": round(float(s), 4)})
    gt = {"images": images, "annotations": anns, "categories": [{"id": 1, "name": "person"}]}
    return gt, dets


def time_coco(gt_file, dets, library):
    if library == "pycocotools":
        from pycocotools.coco import COCO
        from pycocotools.cocoeval import COCOeval
    else:
        from faster_coco_eval import COCO, COCOeval_faster as COCOeval
    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO(str(gt_file))
        res = gt.loadRes(dets)
        t0 = time.perf_counter()
        e = COCOeval(gt, res, "bbox")
        e.evaluate()
        e.accumulate()
        e.summarize()
        seconds = time.perf_counter() - t0
    return seconds, [float(x) for x in e.stats]


def synthetic_rows(rows: list) -> None:
    """The two COCO libraries on the synthetic COCO-scale set: their seconds, and whether they agree."""
    gt, dets = synthetic_coco()
    with tempfile.TemporaryDirectory() as tmp:
        gt_file = Path(tmp) / "gt.json"
        gt_file.write_text(json.dumps(gt))
        t_py, stats_py = time_coco(gt_file, dets, "pycocotools")
        rows.append(("COCO 5000 images x 100 detections", "pycocotools", t_py))
        try:
            t_fast, stats_fast = time_coco(gt_file, dets, "faster-coco-eval")
            rows.append(("COCO 5000 images x 100 detections", "faster-coco-eval", t_fast))
            same = np.allclose(stats_py, stats_fast, atol=1e-12)
            print(f"faster-coco-eval vs pycocotools: AP {stats_fast[0]:.6f} vs {stats_py[0]:.6f}, "
                  f"all 12 stats equal: {same}")
        except ImportError:
            print("faster-coco-eval not installed")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--shared", default=str(ROOT.parent / "shared" / "data" / "citypersons"))
    p.add_argument("--miss-rate-only", action="store_true",
                   help="time the CityPersons miss rate alone (no COCO timings)")
    a = p.parse_args()
    shared = Path(a.shared)
    if a.miss_rate_only and not (shared / "val_gt.json").is_file():
        print(f"benchmark: no CityPersons ground truth in {shared}; pass --shared DIR")
        return 2
    rows = []
    if not a.miss_rate_only:
        synthetic_rows(rows)

    ok = True
    if (shared / "val_gt.json").is_file():
        val_gt = json.loads((shared / "val_gt.json").read_text())
        for name in ("fair", "weak"):
            cp_dets = json.loads((shared / "mr_reference" / f"dets_{name}.json").read_text())
            best = min(_timed(miss_rate.evaluate, val_gt, cp_dets) for _ in range(3))
            rows.append((f"CityPersons val 500 images, dets_{name} ({len(cp_dets)})", "miss rate, 4 setups", best))
            ok &= best <= MR_BAR
        if not a.miss_rate_only:
            coco_val = {"images": [{"id": i["id"], "width": i["width"], "height": i["height"]}
                                   for i in val_gt["images"]],
                        "annotations": [{"id": x["id"], "image_id": x["image_id"], "category_id": 1,
                                         "bbox": x["bbox"], "area": x["bbox"][2] * x["bbox"][3],
                                         "iscrowd": x["ignore"]} for x in val_gt["annotations"]],
                        "categories": [{"id": 1, "name": "person"}]}
            cp_dets = json.loads((shared / "mr_reference" / "dets_fair.json").read_text())
            with tempfile.TemporaryDirectory() as tmp:
                f = Path(tmp) / "val_coco.json"
                f.write_text(json.dumps(coco_val))
                for lib in ("pycocotools", "faster-coco-eval"):
                    with contextlib.suppress(ImportError):
                        rows.append(("CityPersons val 500 images, dets_fair", lib, time_coco(f, cp_dets, lib)[0]))
    else:
        print(f"no CityPersons ground truth in {shared}: miss-rate timing skipped")

    width = max(len(r[0]) for r in rows) if rows else 0
    print(f"\n{'set'.ljust(width)}  {'scorer':<20}  seconds")
    for s, scorer, t in rows:
        print(f"{s.ljust(width)}  {scorer:<20}  {t:7.3f}")
    print(f"\nmiss-rate bar <= {MR_BAR} s (best of 3) for the four setups on 500 images: {'ok' if ok else 'MISSED'}")
    return 0 if ok else 1


def _timed(fn, *args):
    t0 = time.perf_counter()
    fn(*args)
    return time.perf_counter() - t0


if __name__ == "__main__":
    sys.exit(main())
