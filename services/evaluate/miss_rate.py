"""CityPersons log-average miss rate (MR^-2), computed as the official evaluation script does.

This re-implements evaluation/eval_script of the CityPersons repository (cvgroup-njust/CityPersons:
coco.py + eval_MR_multisetup.py, a pycocotools COCOeval variant) with numpy only, and gives the same
numbers (checked against the official script's output in tests/test_miss_rate.py).

The protocol, per setup (a ground-truth height range and visibility range, both ends inclusive):

* A ground truth (category 1 only) is ignored when flagged `ignore` or when its `height` or
  `vis_ratio` lies outside the setup's ranges.
* Per image, detections are sorted by descending score (stable) and cut to 1000; then those whose
  height (bbox h) lies outside [h_min / 1.25, h_max * 1.25) are dropped.
* Matching is greedy in that order at IoU 0.5: a detection takes the free non-ignored ground truth
  of highest IoU; failing that, it may fall on an ignored ground truth, where the overlap is
  intersection / detection area, and is then neither true nor false positive. An ignored ground
  truth can absorb any number of detections.
* Over all images, the counted detections are sorted by descending score (stable); recall =
  TP / non-ignored ground truths, FPPI = FP / number of images in the ground truth (also those
  without detections).
* At each of 9 FPPI points log-spaced in [1e-2, 1e0], the recall is the last one whose FPPI does
  not exceed the point; MR = exp(mean(log(1 - recall))).

Boxes are [x, y, w, h] with x2 = x + w (no +1 pixel convention), as in the official script.
"""
from __future__ import annotations

import numpy as np

SETUPS = {"Reasonable": ([50, 1e10], [0.65, 1e10]),
          "Reasonable_small": ([50, 75], [0.65, 1e10]),
          "Reasonable_occ=heavy": ([50, 1e10], [0.2, 0.65]),
          "All": ([20, 1e10], [0.2, 1e10])}

# Params.fppiThrs of the official script: np.logspace(-2, 0, 9) rounded to 4 decimals (the values of
# Dollar's MATLAB toolbox). The rounding does not change which FPPI step is taken for 500 images,
# but the official values are the ones to use for any other image count.
FPPI_POINTS = np.array([0.0100, 0.0178, 0.0316, 0.0562, 0.1000, 0.1778, 0.3162, 0.5623, 1.0000])
IOU_THRESHOLD = 0.5
MAX_DETS = 1000       # Params.maxDets
EXP_FILTER = 1.25     # Params.expFilter: the detection height margin around the setup's range
CATEGORY_ID = 1       # the official accumulate() only reads category 1 (pedestrian)
_PAIR_CHUNK = 2_000_000  # detection-ground-truth pairs whose overlap is computed at once (memory bound)


def evaluate(gt: dict, dets: list[dict]) -> dict:
    """gt: the val_gt.json dict (images with id, annotations with image_id, bbox [x,y,w,h], height,
    vis_ratio, ignore); dets: COCO results list (image_id, category_id, bbox, score).
    Returns {setup: {"MR": float (fraction, e.g. 0.0281), "fppi": [...], "miss_rate": [...]}}
    where fppi/miss_rate are the full curve data for plotting (lists of floats). MR is NaN for a
    setup without any non-ignored ground truth (the official script prints -1 there)."""
    data = _prepare(gt, dets)
    return {name: _evaluate_setup(data, heights, visibilities)
            for name, (heights, visibilities) in SETUPS.items()}


def _prepare(gt: dict, dets: list[dict]) -> dict:
    """Everything that does not depend on the setup: ground-truth and detection arrays in the
    official evaluation order, and the overlaps of every detection-ground-truth pair that can match."""
    # The official script evaluates the sorted unique image ids of the ground truth (np.unique),
    # and FPPI divides by their number, detections or not.
    image_ids = sorted({im["id"] for im in gt["images"]})
    image_pos = {image_id: k for k, image_id in enumerate(image_ids)}

    # Ground truths: category 1 of known images, grouped by image in annotation order. Within an
    # image the official order is "non-ignored first" by a stable sort, so among non-ignored ones the
    # annotation order stays, and it decides ties in IoU (see _greedy_match).
    anns = [a for a in gt.get("annotations", [])
            if a.get("category_id", CATEGORY_ID) == CATEGORY_ID and a["image_id"] in image_pos]
    anns.sort(key=lambda a: image_pos[a["image_id"]])  # stable
    try:
        g_box = np.array([a["bbox"] for a in anns], dtype=np.float64).reshape(-1, 4)
        g_height = np.array([a["height"] if "height" in a else a["bbox"][3] for a in anns],
                            dtype=np.float64)
        g_vis = np.array([a["vis_ratio"] for a in anns], dtype=np.float64)
    except KeyError as e:
        raise ValueError(f"ground-truth annotations need bbox and vis_ratio; one lacks {e}") from None
    # coco.py's loadRes leaves gts alone; eval_MR_multisetup._prepare treats a missing ignore as 0.
    g_flag = np.array([bool(a.get("ignore", 0)) for a in anns], dtype=bool)
    g_img = np.array([image_pos[a["image_id"]] for a in anns], dtype=np.int64)
    g_count = np.bincount(g_img, minlength=len(image_ids))
    g_start = np.cumsum(g_count) - g_count

    # Detections.
    _check_detections(dets, image_pos)
    d_box = np.array([d["bbox"] for d in dets], dtype=np.float64).reshape(-1, 4)
    d_score = np.array([d["score"] for d in dets], dtype=np.float64)
    d_img = np.array([image_pos[d["image_id"]] for d in dets], dtype=np.int64)
    # evaluateImg: per image, detections in result-file order, sorted by -score with mergesort
    # (stable), first maxDets kept. One lexsort does it for all images: image, then -score, then
    # the position in the results list.
    order = np.lexsort((np.arange(len(dets)), -d_score, d_img))
    d_img, d_box, d_score = d_img[order], d_box[order], d_score[order]
    group_start = np.searchsorted(d_img, d_img, side="left")
    rank = np.arange(len(d_img)) - group_start
    keep = rank < MAX_DETS
    d_img, d_box, d_score = d_img[keep], d_box[keep], d_score[keep]
    # accumulate(): the per-image lists concatenated in image-id order, then a stable argsort of
    # -score over all of them. The detections are in exactly that concatenation order now.
    accumulate_order = np.argsort(-d_score, kind="mergesort")

    pair_det, pair_gt, pair_iou, pair_iod = _overlapping_pairs(d_box, d_img, g_box, g_count, g_start)
    return {"n_images": len(image_ids), "g_flag": g_flag, "g_height": g_height, "g_vis": g_vis,
            "d_height": d_box[:, 3],  # loadRes sets a detection's height to its bbox h
            "accumulate_order": accumulate_order,
            "pair_det": pair_det, "pair_gt": pair_gt, "pair_iou": pair_iou, "pair_iod": pair_iod}


def _check_detections(dets: list[dict], image_pos: dict) -> None:
    """Refuse what the official script would silently drop or assert on."""
    unknown = _sorted_ids({d["image_id"] for d in dets if d["image_id"] not in image_pos})
    if unknown:
        shown = ", ".join(map(str, unknown[:5])) + (", ..." if len(unknown) > 5 else "")
        raise ValueError(f"detections reference {len(unknown)} image id(s) not in the ground truth: "
                         f"{shown}")
    other = _sorted_ids({d.get("category_id", CATEGORY_ID) for d in dets} - {CATEGORY_ID})
    if other:
        raise ValueError(f"detections of category id {', '.join(map(str, other[:5]))}: CityPersons "
                         f"is evaluated on pedestrians only (category_id {CATEGORY_ID})")


def _sorted_ids(ids: set) -> list:
    try:
        return sorted(ids)
    except TypeError:  # mixed types (say int and str): any stable order will do for a message
        return sorted(ids, key=str)


def _overlapping_pairs(d_box, d_img, g_box, g_count, g_start):
    """Every (detection, ground truth) pair of the same image that may match at 0.5, with its IoU
    and its intersection over detection area (the official iou() for a ground truth whose ignore
    flag is set). Pairs come detection by detection, ground truths in their order."""
    per_det = g_count[d_img] if len(d_img) else np.zeros(0, dtype=np.int64)
    cum = np.cumsum(per_det)
    out = [], [], [], []
    start = 0
    while start < len(d_img):
        done = int(cum[start - 1]) if start else 0
        stop = max(int(np.searchsorted(cum, done + _PAIR_CHUNK, side="right")), start + 1)
        counts = per_det[start:stop]
        det = np.repeat(np.arange(start, stop), counts)
        first = np.repeat(np.cumsum(counts) - counts, counts)
        gt = np.repeat(g_start[d_img[start:stop]], counts) + np.arange(len(det)) - first
        iou, iod, hit = _overlaps(d_box[det], g_box[gt])
        for acc, values in zip(out, (det[hit], gt[hit], iou, iod)):
            acc.append(values)
        start = stop
    if not out[0]:
        return np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0), np.zeros(0)
    return tuple(np.concatenate(acc) for acc in out)


def _overlaps(d, g):
    """IoU and intersection/detection-area of paired boxes, the official iou() arithmetic (no +1,
    x2 = x + w, union = darea + garea - inter), kept where either reaches the threshold."""
    iw = np.minimum(d[:, 0] + d[:, 2], g[:, 0] + g[:, 2]) - np.maximum(d[:, 0], g[:, 0])
    ih = np.minimum(d[:, 1] + d[:, 3], g[:, 1] + g[:, 3]) - np.maximum(d[:, 1], g[:, 1])
    hit = np.flatnonzero((iw > 0) & (ih > 0))  # official: `if unionw <= 0: continue` -> 0
    inter = iw[hit] * ih[hit]
    darea = d[hit, 2] * d[hit, 3]
    garea = g[hit, 2] * g[hit, 3]
    iou = inter / (darea + garea - inter)
    iod = inter / darea
    close = (iou >= IOU_THRESHOLD) | (iod >= IOU_THRESHOLD)
    return iou[close], iod[close], hit[close]


def _evaluate_setup(data: dict, heights, visibilities) -> dict:
    h_min, h_max = heights
    v_min, v_max = visibilities
    # eval_MR_multisetup._prepare: out of the setup's ranges (ends inclusive) -> ignored.
    g_ignored = (data["g_flag"] | (data["g_height"] < h_min) | (data["g_height"] > h_max)
                 | (data["g_vis"] < v_min) | (data["g_vis"] > v_max))
    # evaluateImg: detections outside [h_min / 1.25, h_max * 1.25) are dropped (after the 1000 cut).
    d_height = data["d_height"]
    d_kept = (d_height >= h_min / EXP_FILTER) & (d_height < h_max * EXP_FILTER)

    det, gt = data["pair_det"], data["pair_gt"]
    live = d_kept[det]
    on_ignored = g_ignored[gt]
    regular = live & ~on_ignored & (data["pair_iou"] >= IOU_THRESHOLD)
    # An ignored ground truth uses intersection / detection area (iscrowd = the ignore flag).
    absorbing = live & on_ignored & (data["pair_iod"] >= IOU_THRESHOLD)

    tp = _greedy_match(det[regular], gt[regular], data["pair_iou"][regular], len(d_height), len(g_ignored))
    on_ignore_region = np.zeros(len(d_height), dtype=bool)
    on_ignore_region[det[absorbing]] = True
    # Only a detection that found no free non-ignored ground truth goes on to the ignored ones.
    counted = d_kept & (tp | ~on_ignore_region)

    order = data["accumulate_order"]
    tp_seq = tp[order][counted[order]]
    n_positive = int(np.count_nonzero(~g_ignored))
    if n_positive == 0:
        # The official accumulate() skips the setup and summarize() prints -1; no MR is defined.
        return {"MR": float("nan"), "fppi": [], "miss_rate": []}
    recall = np.cumsum(tp_seq) / n_positive
    fppi = np.cumsum(~tp_seq) / data["n_images"]
    # (The official backward pass "recall[i-1] = recall[i] if smaller" is a no-op on a cumulative
    # recall, so it is left out.)
    return {"MR": log_average_miss_rate(fppi, recall),
            "fppi": fppi.tolist(), "miss_rate": (1.0 - recall).tolist()}


def _greedy_match(det, gt, iou, n_dets: int, n_gts: int) -> np.ndarray:
    """The official matching loop, restricted to the pairs that can match a non-ignored ground
    truth: each detection in turn (per image, by descending score) takes, among the ground truths
    not yet taken, the one with the highest IoU >= 0.5; on equal IoU the later ground truth wins
    (the official loop skips only `iou < best`). Returns the true-positive flag per detection."""
    tp = np.zeros(n_dets, dtype=bool)
    taken = bytearray(n_gts)
    det, gt, iou = det.tolist(), gt.tolist(), iou.tolist()
    i, n = 0, len(det)
    while i < n:
        d, best_g, best = det[i], -1, IOU_THRESHOLD
        while i < n and det[i] == d:
            if not taken[gt[i]] and iou[i] >= best:
                best, best_g = iou[i], gt[i]
            i += 1
        if best_g >= 0:
            taken[best_g] = 1
            tp[d] = True
    return tp


def log_average_miss_rate(fppi: np.ndarray, recall: np.ndarray) -> float:
    """exp(mean(log(1 - recall))) over FPPI_POINTS, recall taken at the last curve point whose
    FPPI does not exceed each of them, as the official accumulate() + summarize() do."""
    if len(recall) == 0:
        # Official: indexing an empty recall raises inside a try/except, the points stay 0 -> MR 1.
        return 1.0
    # searchsorted(..., side='right') - 1 gives -1 where even the first point's FPPI is above the
    # FPPI point; the official code then reads recall[-1], the final recall, and so do we.
    at = recall[np.searchsorted(fppi, FPPI_POINTS, side="right") - 1]
    # Official: np.log(1 - recall) with no floor, so a recall of 1 at some point gives MR 0.
    with np.errstate(divide="ignore"):
        return float(np.exp(np.mean(np.log(1.0 - at))))
