"""Scoring a COCO results list: COCO bbox AP with pycocotools (faster-coco-eval when installed: the
same numbers, several times faster) and the official CityPersons miss rate. numpy-only apart from
the COCO library, so it runs in both environments."""
import contextlib
import io
import json
from pathlib import Path

from . import miss_rate

COCO_STATS = ["AP", "AP50", "AP75", "AP_small", "AP_medium", "AP_large",
              "AR1", "AR10", "AR100", "AR_small", "AR_medium", "AR_large"]


def check_ids(gt: dict, dets: list[dict]) -> None:
    known = {i["id"] for i in gt["images"]}
    unknown = sorted({d["image_id"] for d in dets} - known)
    if unknown:
        raise ValueError(f"{len(unknown)} detection image id(s) are not in the ground truth, e.g. "
                         f"{unknown[:5]}; detections and ground truth must come from the same split")
    cats = {c["id"] for c in gt["categories"]}
    bad = sorted({d["category_id"] for d in dets} - cats)
    if bad:
        raise ValueError(f"detection category id(s) {bad[:5]} are not in the ground truth "
                         f"(it has {sorted(cats)})")


def coco_ap(gt_file: Path, dets: list[dict], library: str = "auto") -> dict:
    """COCOeval bbox stats as a dict; all zeros for an empty detection set (pycocotools cannot load one).
    library: auto (faster-coco-eval if installed, else pycocotools), pycocotools, faster-coco-eval."""
    if not dets:
        return {k: 0.0 for k in COCO_STATS} | {"library": None}
    if library in ("auto", "faster-coco-eval"):
        try:
            from faster_coco_eval import COCO, COCOeval_faster as COCOeval
            library = "faster-coco-eval"
        except ImportError:
            if library == "faster-coco-eval":
                raise
            library = "pycocotools"
    if library == "pycocotools":
        from pycocotools.coco import COCO
        from pycocotools.cocoeval import COCOeval
    with contextlib.redirect_stdout(io.StringIO()):  # both print progress we do not need
        gt = COCO(str(gt_file))
        e = COCOeval(gt, gt.loadRes(dets), "bbox")
        e.evaluate()
        e.accumulate()
        e.summarize()
    stats = {k: float(v) for k, v in zip(COCO_STATS, e.stats)}
    return stats | {"library": library}


def miss_rates(gt: dict, dets: list[dict]) -> dict:
    """MR^-2 (fraction) per official setup plus the MR-FPPI curve for plotting."""
    return miss_rate.evaluate(gt, dets)


def load_json(path: Path):
    return json.loads(Path(path).read_text())
