"""The pre- and post-processing every backend shares, so differences between formats come from the
model, not the code. numpy and OpenCV only, and nothing from the project: it runs in the train
environment and in the convert environment (numpy 1.26, no ultralytics), where the RKNN simulator
uses it too, and the board bundle carries a copy as runtime/yolo_core.py (services/convert/board.py).

Pre-processing is ultralytics' LetterBox (keep the aspect ratio, pad with grey 114 to the input size,
centred), BGR -> RGB, /255, NCHW float32. Post-processing takes the raw outputs of any head layout
(LAYOUTS: the standard ultralytics head and the RKNN heads), keeps the anchors whose score is above
`conf`, decodes only their boxes, runs class-aware greedy NMS (OpenCV's, compiled) and scales the
boxes back to original pixels. The one-to-one head of NMS-free models (YOLO26) is selected by its
scores alone, as ultralytics does: the best `max_det` (anchor, class) scores above `conf`, no NMS.

Sliced inference (evaluate.tiles, the board's --tiles): a frame cut into overlapping tiles along its
long side, each letterboxed into the model input as a whole frame would be, and the tiles'
detections merged back into one frame (boxes cut by a tile edge joined, one NMS over the frame).
One tile is the letterbox above, exactly.
"""
import math

import cv2
import numpy as np


def input_size(imgsz) -> tuple[int, int]:
    """(height, width) from an int (square) or a [h, w] pair."""
    if isinstance(imgsz, int):
        return imgsz, imgsz
    h, w = imgsz
    return int(h), int(w)


def letterbox(image: np.ndarray, size: tuple[int, int]):
    """Resize `image` (H, W, 3 BGR) into `size` (h, w) keeping its aspect ratio, padding the rest with
    114, exactly as ultralytics does. Returns the padded image, the scale and the (left, top) pad."""
    h, w = size
    ih, iw = image.shape[:2]
    r = min(h / ih, w / iw)
    nw, nh = int(round(iw * r)), int(round(ih * r))
    dw, dh = (w - nw) / 2, (h - nh) / 2
    if (iw, ih) != (nw, nh):
        image = cv2.resize(image, (nw, nh), interpolation=cv2.INTER_LINEAR)
    top, bottom = int(round(dh - 0.1)), int(round(dh + 0.1))
    left, right = int(round(dw - 0.1)), int(round(dw + 0.1))
    image = cv2.copyMakeBorder(image, top, bottom, left, right, cv2.BORDER_CONSTANT, value=(114, 114, 114))
    return image, r, (left, top)


def preprocess(image: np.ndarray, size: tuple[int, int]):
    """One BGR image -> (1, 3, h, w) float32 in [0, 1], plus what `scale_boxes` needs."""
    padded, r, pad = letterbox(image, size)
    x = padded[:, :, ::-1].transpose(2, 0, 1)[None].astype(np.float32) / 255.0
    return np.ascontiguousarray(x), (r, pad, image.shape[:2])


def nms(boxes: np.ndarray, scores: np.ndarray, iou: float, max_keep: int | None = None) -> np.ndarray:
    """Greedy NMS on xyxy boxes (OpenCV's compiled one); indices kept, best first, at most `max_keep`.
    A box goes when its IoU with a kept one exceeds `iou`. Ties keep anchor order: INT8 scores tie
    often, and OpenCV's own sort does not keep the order of equal scores, so it gets ranks instead."""
    n = len(boxes)
    if not n:
        return np.zeros(0, dtype=np.int64)
    order = np.argsort(-scores, kind="stable")
    xywh = np.concatenate([boxes[order, :2], boxes[order, 2:] - boxes[order, :2]], 1).astype(np.float64)
    rank = np.arange(n, 0, -1, dtype=np.float32)  # distinct, exact in float32 below 2**24 boxes
    # Greedy NMS decides each box from the better ones alone, so NMS over the best k candidates keeps
    # exactly the first boxes NMS over all of them keeps: stop once that is `max_keep` boxes.
    k = n if max_keep is None else min(n, 4 * max_keep)
    while True:
        keep = np.asarray(cv2.dnn.NMSBoxes(xywh[:k], rank[:k], 0.0, float(iou)), dtype=np.int64).reshape(-1)
        if k == n or len(keep) >= max_keep:
            return order[keep[:max_keep] if max_keep else keep]
        k = min(n, 4 * k)


def nms_reference(boxes: np.ndarray, scores: np.ndarray, iou: float, max_keep: int | None = None) -> np.ndarray:
    """The plain numpy NMS the evaluator used before OpenCV's; kept to prove the two agree."""
    order = np.argsort(-scores, kind="stable")
    areas = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    keep = []
    while order.size and len(keep) != max_keep:
        i = order[0]
        keep.append(i)
        rest = order[1:]
        xx1 = np.maximum(boxes[i, 0], boxes[rest, 0])
        yy1 = np.maximum(boxes[i, 1], boxes[rest, 1])
        xx2 = np.minimum(boxes[i, 2], boxes[rest, 2])
        yy2 = np.minimum(boxes[i, 3], boxes[rest, 3])
        inter = np.clip(xx2 - xx1, 0, None) * np.clip(yy2 - yy1, 0, None)
        overlap = inter / (areas[i] + areas[rest] - inter + 1e-9)
        order = rest[overlap <= iou]
    return np.asarray(keep, dtype=np.int64)


def select(boxes: np.ndarray, scores: np.ndarray, cls: np.ndarray, iou: float, max_det: int, nms_fn=nms):
    """Class-aware NMS over candidates already above the confidence threshold, as ultralytics does;
    at most `max_det`, best first."""
    kept = []
    for c in np.unique(cls):
        idx = np.nonzero(cls == c)[0]
        # each class keeps at most max_det: the best max_det overall cannot hold more of one class
        kept.append(idx[nms_fn(boxes[idx], scores[idx], iou, max_det)])
    idx = np.concatenate(kept) if kept else np.zeros(0, dtype=np.int64)
    idx = idx[np.argsort(-scores[idx], kind="stable")][:max_det]
    return boxes[idx], scores[idx], cls[idx]


def decode(output: np.ndarray, conf: float, iou: float, max_det: int, nms_fn=nms):
    """Standard head output (4 + classes, anchors) for one image -> xyxy boxes (input pixels), scores,
    class ids, at most `max_det`, best first."""
    return postprocess([output[None]], "standard", None, conf, iou, max_det, nms_fn)


# ------------------------------------------------------------------------------- RKNN head layouts
# How the RKNN model's outputs are laid out. Each INT8 output tensor gets one scale for all its values,
# so what an output holds decides how finely it is rounded (docs/thesis/convert.md: "The RKNN head").
LAYOUTS = {
    "dfl": "per stride s in (8, 16, 32): box_s<s> (1, 64, h/s, w/s) DFL logits (4 sides x 16 bins) and "
           "score_s<s> (1, classes, h/s, w/s) sigmoid scores; softmax, expectation and decode on the CPU",
    "distances": "per stride s: box_s<s> (1, 4, h/s, w/s) left, top, right, bottom distances in stride units "
                 "(0..15) and score_s<s> (1, classes, h/s, w/s) sigmoid scores; decode on the CPU",
    "normalized": "boxes (1, 4, anchors) cx, cy, w, h divided by (w, h, w, h); scores (1, classes, anchors)",
    "one2one": "per stride s: box_s<s> (1, 4, h/s * w/s) left, top, right, bottom distances in stride units and "
               "score_s<s> (1, classes, h/s * w/s) sigmoid scores of the one-to-one (NMS-free, YOLO26) branch; "
               "the CPU keeps the best max_det scores above conf (no NMS) and decodes only their boxes",
    "standard": "output0 (1, 4 + classes, anchors): cx, cy, w, h in input pixels, then class scores",
    "end2end": "output0 (1, max_det, 6): x1, y1, x2, y2 in input pixels, score, class; the one-to-one head's "
               "top-k already inside the model (ultralytics' NMS-free export of YOLO26, with ONNX TopK)",
}
STRIDES = (8, 16, 32)
REG_MAX = 16


def layout_of(shapes: list, size: tuple[int, int]) -> str:
    """Which layout a model's output shapes (with batch 1) have, for an input of `size` (h, w)."""
    shapes = [tuple(int(d) for d in s) for s in shapes]
    if len(shapes) == 1 and len(shapes[0]) == 3:
        # a standard head's last axis is its anchor count, at least 21 (a 32x32 input)
        return "end2end" if shapes[0][2] == 6 else "standard"
    if len(shapes) == 2 and all(len(s) == 3 for s in shapes) and shapes[0][1] == 4:
        return "normalized"
    if len(shapes) == 6 and all(len(s) == 3 for s in shapes):
        cells = [(size[0] // s) * (size[1] // s) for s in STRIDES]
        boxes, scores = shapes[0::2], shapes[1::2]
        if [s[2] for s in boxes] == cells == [s[2] for s in scores] and {s[1] for s in boxes} == {4}:
            return "one2one"
    if len(shapes) == 6 and all(len(s) == 4 for s in shapes):
        grids = [(size[0] // s, size[1] // s) for s in STRIDES]
        if [s[2:] for s in shapes[0::2]] == grids and [s[2:] for s in shapes[1::2]] == grids:
            channels = {s[1] for s in shapes[0::2]}
            if channels == {4 * REG_MAX}:
                return "dfl"
            if channels == {4}:
                return "distances"
    raise ValueError(f"output shapes {shapes} match no known layout ({', '.join(LAYOUTS)}) for input {list(size)}")


def _softmax_expectation(logits: np.ndarray) -> np.ndarray:
    """(n, 4, 16) DFL logits -> (n, 4) expected distances in stride units, in float32 on the CPU."""
    e = np.exp(logits - logits.max(-1, keepdims=True))
    return (e * np.arange(REG_MAX, dtype=np.float32)).sum(-1) / e.sum(-1)


def _above(scores: np.ndarray, conf: float):
    """(classes, anchors) scores -> indices of the anchors whose best class score is above `conf`,
    that score and that class."""
    cls = scores.argmax(0)
    best = scores[cls, np.arange(scores.shape[1])]
    keep = np.nonzero(best > conf)[0]
    return keep, best[keep], cls[keep]


def candidates(outputs: list, layout: str, size: tuple[int, int], conf: float):
    """One image's raw outputs (each with batch 1) -> the anchors whose best class score is above
    `conf`, as xyxy boxes in input pixels, scores and class ids. Boxes are decoded only for those."""
    if layout in ("standard", "normalized"):
        if layout == "standard":
            out = np.asarray(outputs[0])[0]
            box_part, scale = out[:4], 1.0
            keep, scores, cls = _above(out[4:], conf)
        else:
            h, w = size
            box_part, scale = np.asarray(outputs[0])[0], np.array([[w], [h], [w], [h]], np.float32)
            keep, scores, cls = _above(np.asarray(outputs[1])[0], conf)
        cxcywh = (box_part[:, keep] * scale).T
        boxes = np.concatenate([cxcywh[:, :2] - cxcywh[:, 2:] / 2, cxcywh[:, :2] + cxcywh[:, 2:] / 2], 1)
        return boxes.astype(np.float32), scores, cls
    if layout not in ("dfl", "distances"):  # one2one and end2end select by score alone: see postprocess
        raise ValueError(f"unknown output layout {layout!r}; known: {', '.join(LAYOUTS)}")
    all_boxes, all_scores, all_cls = [], [], []
    for level, stride in enumerate(STRIDES):
        box, score = np.asarray(outputs[2 * level])[0], np.asarray(outputs[2 * level + 1])[0]
        nc, gh, gw = score.shape
        keep, best, cls = _above(score.reshape(nc, gh * gw), conf)
        if layout == "dfl":
            logits = box.reshape(4, REG_MAX, gh * gw)[:, :, keep].transpose(2, 0, 1).astype(np.float32)
            ltrb = _softmax_expectation(logits)
        else:
            ltrb = box.reshape(4, gh * gw)[:, keep].T.astype(np.float32)
        ax, ay = (keep % gw).astype(np.float32) + 0.5, (keep // gw).astype(np.float32) + 0.5
        all_boxes.append(np.stack([ax - ltrb[:, 0], ay - ltrb[:, 1], ax + ltrb[:, 2], ay + ltrb[:, 3]], 1) * stride)
        all_scores.append(best)
        all_cls.append(cls)
    return (np.concatenate(all_boxes).astype(np.float32), np.concatenate(all_scores).astype(np.float32),
            np.concatenate(all_cls))


def postprocess(outputs: list, layout: str, size: tuple[int, int], conf: float, iou: float, max_det: int,
                nms_fn=nms):
    """One image's raw outputs in any layout -> xyxy boxes (input pixels), scores, class ids, at most
    `max_det`, best first: threshold, decode what is left, class-aware NMS (or, for the NMS-free
    layouts one2one and end2end, the best scores alone; `iou` is then unused). Every backend and the
    board script go through here."""
    if layout == "one2one":
        return one2one(outputs, size, conf, max_det)
    if layout == "end2end":
        out = np.asarray(outputs[0])[0]
        out = out[out[:, 4] > conf]
        out = out[np.argsort(-out[:, 4], kind="stable")][:max_det]  # the model's top-k is sorted already
        return out[:, :4].astype(np.float32), out[:, 4].astype(np.float32), out[:, 5].astype(np.int64)
    boxes, scores, cls = candidates(outputs, layout, size, conf)
    return select(boxes, scores, cls, iou, max_det, nms_fn)


def top_scores(scores: np.ndarray, conf: float, k: int) -> np.ndarray:
    """Indices of the best `k` values of the flat array `scores` above `conf`, best first; equal
    scores in index order (INT8 scores tie often: the order must not depend on the sort's mood)."""
    idx = np.flatnonzero(scores > conf)
    if len(idx) > k:
        # the k-th best value; everything at least as good goes to the exact stable sort below
        kth = np.partition(scores[idx], len(idx) - k)[len(idx) - k]
        idx = idx[scores[idx] >= kth]
    return idx[np.argsort(-scores[idx], kind="stable")][:k]


def one2one(outputs: list, size: tuple[int, int], conf: float, max_det: int):
    """The one2one layout: the one-to-one head gives each object one anchor, so selection is
    ultralytics' top-k (Detect.get_topk_index): the best `max_det` (anchor, class) scores above `conf`,
    without NMS. Boxes are decoded for those alone (distances in stride units around the cell centre)."""
    h, w = size
    scores = np.concatenate([np.asarray(o)[0] for o in outputs[1::2]], 1)  # (classes, anchors)
    nc = scores.shape[0]
    # anchor-major order (anchor, then class), as ultralytics flattens its (anchors, classes) scores
    pick = top_scores(scores[0] if nc == 1 else scores.T.reshape(-1), conf, max_det)
    anchor, cls = divmod(pick, nc)
    grids = [(h // s, w // s) for s in STRIDES]
    start = np.cumsum([0] + [gh * gw for gh, gw in grids])
    level = np.searchsorted(start, anchor, side="right") - 1
    local, width = anchor - start[level], np.array([gw for _, gw in grids])[level]
    ax, ay = (local % width).astype(np.float32) + 0.5, (local // width).astype(np.float32) + 0.5
    ltrb = np.concatenate([np.asarray(o)[0] for o in outputs[0::2]], 1)[:, anchor].astype(np.float32)
    stride = np.array(STRIDES, np.float32)[level]
    boxes = np.stack([ax - ltrb[0], ay - ltrb[1], ax + ltrb[2], ay + ltrb[3]], 1) * stride[:, None]
    return boxes, scores[cls, anchor].astype(np.float32), cls.astype(np.int64)


def scale_boxes(boxes: np.ndarray, meta) -> np.ndarray:
    """Input-pixel xyxy boxes -> original-image pixels, clipped to the image."""
    r, (left, top), (ih, iw) = meta
    out = boxes.copy()
    out[:, [0, 2]] = ((out[:, [0, 2]] - left) / r).clip(0, iw)
    out[:, [1, 3]] = ((out[:, [1, 3]] - top) / r).clip(0, ih)
    return out


def to_coco(image_id: int, boxes: np.ndarray, scores: np.ndarray, cls: np.ndarray, category_ids) -> list[dict]:
    """Original-pixel xyxy detections -> COCO results entries ([x, y, w, h], rounded to 0.01 px)."""
    return [{"image_id": int(image_id), "category_id": int(category_ids[int(c)]),
             "bbox": [round(float(b[0]), 2), round(float(b[1]), 2), round(float(b[2] - b[0]), 2),
                      round(float(b[3] - b[1]), 2)], "score": round(float(s), 5)}
            for b, s, c in zip(boxes, scores, cls)]


# ------------------------------------------------------------------------------- sliced inference
# A 2048x1024 frame letterboxed into 640x1280 shrinks a 50 px pedestrian to 31 px; cut into tiles, each
# letterboxed into an input of its own, the frame keeps more of its pixels, and the RK3588 runs one
# tile per NPU core. tiles=1 is the plain letterbox above, exactly.
EDGE_PX = 4  # input pixels: a box ending this close to a tile's inner edge was cut by that edge
MERGE_IOU = 0.5  # two boxes cut apart by a tile edge agree this well where their tiles overlap


def tile_windows(frame_hw: tuple[int, int], tiles: int, overlap: float) -> list[tuple[int, int, int, int]]:
    """(x0, y0, x1, y1) of `tiles` windows side by side along the frame's long side, each spanning its
    whole short side; neighbours share `overlap` (0 to below 1) of a window's length, spread evenly.
    One tile is the whole frame."""
    h, w = frame_hw
    if tiles < 1 or not 0 <= overlap < 1:
        raise ValueError(f"tiles={tiles}, tile_overlap={overlap}: tiles must be 1 or more and the overlap a share "
                         f"of a tile from 0 to below 1 (at 1 neighbouring tiles would be the same window)")
    long = max(h, w)
    length = min(long, math.ceil(long / (tiles - (tiles - 1) * overlap)))
    starts = [round(i * (long - length) / (tiles - 1)) for i in range(tiles)] if tiles > 1 else [0]
    if w >= h:
        return [(s, 0, s + length, h) for s in starts]
    return [(0, s, w, s + length) for s in starts]


def check_tiles(frame_hw: tuple[int, int], size: tuple[int, int], tiles: int, overlap: float) -> list:
    """The windows of `tile_windows`, refused when the tiles are smaller than the model input on both
    sides: the letterbox would enlarge them, more input pixels without more detail."""
    windows = tile_windows(frame_hw, tiles, overlap)
    x0, y0, x1, y1 = windows[0]
    if tiles > 1 and y1 - y0 < size[0] and x1 - x0 < size[1]:
        raise ValueError(f"tiles={tiles} cuts a {frame_hw[1]}x{frame_hw[0]} frame into {x1 - x0}x{y1 - y0} tiles, "
                         f"smaller than the model input {size[1]}x{size[0]} on both sides (the letterbox would "
                         f"enlarge them); use fewer tiles or a smaller input")
    return windows


def letterbox_tiles(image: np.ndarray, size: tuple[int, int], tiles: int = 1, overlap: float = 0.0) -> list:
    """One BGR frame -> [(letterboxed BGR tile, scale_boxes meta of the tile, (x0, y0) of its window)]."""
    out = []
    for x0, y0, x1, y1 in check_tiles(image.shape[:2], size, tiles, overlap):
        crop = image[y0:y1, x0:x1]
        padded, r, pad = letterbox(crop, size)
        out.append((padded, (r, pad, crop.shape[:2]), (x0, y0)))
    return out


def preprocess_tiles(image: np.ndarray, size: tuple[int, int], tiles: int = 1, overlap: float = 0.0):
    """One BGR frame -> (tiles, 3, h, w) float32 inputs and each tile's (meta, (x0, y0)) for
    merge_tiles. One tile gives exactly `preprocess`'s input and meta."""
    parts = letterbox_tiles(image, size, tiles, overlap)
    x = np.concatenate([padded[:, :, ::-1].transpose(2, 0, 1)[None] for padded, _, _ in parts]).astype(np.float32)
    return np.ascontiguousarray(x / 255.0), [(meta, offset) for _, meta, offset in parts]


def merge_tiles(per_tile: list, metas: list, iou: float, max_det: int):
    """Each tile's (boxes in input pixels, scores, classes), as postprocess gives them, -> the frame's
    xyxy boxes in original pixels, scores, classes, at most `max_det`, best first. A box cut by a tile
    edge is joined to its other part from the neighbouring tile (the union, the better score), then one
    class-aware NMS over the frame removes what two tiles both saw whole. One tile: scale_boxes alone."""
    if len(per_tile) == 1:
        boxes, scores, cls = per_tile[0]
        return scale_boxes(boxes, metas[0][0]), scores, cls
    windows = np.stack([_window(meta, offset) for meta, offset in metas])
    frame_end = windows[:, 2:].max(0)  # the windows cover the frame
    parts = [_in_frame(b, meta, w, frame_end) for (b, _, _), (meta, _), w in zip(per_tile, metas, windows)]
    boxes = np.concatenate([b for b, _ in parts]).reshape(-1, 4).astype(np.float32)
    cut = np.concatenate([c for _, c in parts]).astype(bool)
    scores = np.concatenate([s for _, s, _ in per_tile]).astype(np.float32)
    cls = np.concatenate([c for _, _, c in per_tile]).astype(np.int64)
    tile = np.concatenate([np.full(len(b), i) for i, (b, _) in enumerate(parts)])
    parent = np.arange(len(boxes))
    for a in range(len(windows)):
        for b in range(a + 1, len(windows)):
            for i, j in _cut_pairs(boxes, scores, cls, cut, tile == a, tile == b, windows[a], windows[b]):
                parent[_root(parent, j)] = _root(parent, i)
    roots = np.array([_root(parent, i) for i in range(len(boxes))], dtype=np.int64)
    groups = np.unique(roots)
    if len(groups) < len(boxes):  # some parts were joined: each group becomes its union
        members = [np.flatnonzero(roots == g) for g in groups]
        best = np.array([m[np.argmax(scores[m])] for m in members], dtype=np.int64)
        boxes = np.stack([np.concatenate([boxes[m, :2].min(0), boxes[m, 2:].max(0)]) for m in members])
        scores, cls = scores[best], cls[best]
    return select(boxes.astype(np.float32), scores, cls, iou, max_det)


def _window(meta, offset) -> np.ndarray:
    """A tile's window in frame pixels, (x0, y0, x1, y1)."""
    (th, tw), (x0, y0) = meta[2], offset
    return np.array([x0, y0, x0 + tw, y0 + th], np.float32)


def _in_frame(boxes: np.ndarray, meta, window: np.ndarray, frame_end: np.ndarray):
    """One tile's boxes in frame pixels, and whether each ends at an inner edge of the tile: one the
    tile cut the picture at, not one where the frame itself ends."""
    x0, y0, x1, y1 = window
    out = scale_boxes(boxes, meta) + np.array([x0, y0, x0, y0], np.float32)
    margin = EDGE_PX / meta[0]  # input pixels -> frame pixels
    cut = (x0 > 0) & (out[:, 0] <= x0 + margin)
    cut |= (y0 > 0) & (out[:, 1] <= y0 + margin)
    cut |= (x1 < frame_end[0]) & (out[:, 2] >= x1 - margin)
    cut |= (y1 < frame_end[1]) & (out[:, 3] >= y1 - margin)
    return out, cut


def _cut_pairs(boxes, scores, cls, cut, in_a, in_b, window_a, window_b) -> list:
    """Pairs (i in tile a, j in tile b) that are one object cut apart: at least one of them cut by an
    edge, the same class, and the parts inside the windows' shared region agree (IoU >= MERGE_IOU).
    Each box pairs at most once, best scores first, so a weak duplicate cannot widen a good box."""
    shared = np.concatenate([np.maximum(window_a[:2], window_b[:2]), np.minimum(window_a[2:], window_b[2:])])
    if np.any(shared[2:] <= shared[:2]):
        return []
    ia, ib = np.flatnonzero(in_a), np.flatnonzero(in_b)
    ca = np.concatenate([np.maximum(boxes[ia, :2], shared[:2]), np.minimum(boxes[ia, 2:], shared[2:])], 1)
    cb = np.concatenate([np.maximum(boxes[ib, :2], shared[:2]), np.minimum(boxes[ib, 2:], shared[2:])], 1)
    overlap = _iou(ca, cb)
    ok = (overlap >= MERGE_IOU) & (cut[ia][:, None] | cut[ib][None]) & (cls[ia][:, None] == cls[ib][None])
    pairs, used_a, used_b = [], set(), set()
    ra, rb = np.nonzero(ok)
    order = np.lexsort((-overlap[ra, rb], -np.maximum(scores[ia][ra], scores[ib][rb])))
    for k in order:
        if ra[k] not in used_a and rb[k] not in used_b:
            used_a.add(ra[k])
            used_b.add(rb[k])
            pairs.append((ia[ra[k]], ib[rb[k]]))
    return pairs


def _iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """(n, 4) and (m, 4) xyxy -> (n, m) IoU; an empty box (outside the shared region) matches nothing."""
    wa, ha = np.clip(a[:, 2] - a[:, 0], 0, None), np.clip(a[:, 3] - a[:, 1], 0, None)
    wb, hb = np.clip(b[:, 2] - b[:, 0], 0, None), np.clip(b[:, 3] - b[:, 1], 0, None)
    iw = np.clip(np.minimum(a[:, None, 2], b[None, :, 2]) - np.maximum(a[:, None, 0], b[None, :, 0]), 0, None)
    ih = np.clip(np.minimum(a[:, None, 3], b[None, :, 3]) - np.maximum(a[:, None, 1], b[None, :, 1]), 0, None)
    inter = iw * ih
    union = (wa * ha)[:, None] + (wb * hb)[None] - inter
    return np.where(union > 0, inter / np.maximum(union, 1e-9), 0.0)


def _root(parent: np.ndarray, i: int) -> int:
    while parent[i] != i:
        parent[i] = parent[parent[i]]
        i = parent[i]
    return int(i)
