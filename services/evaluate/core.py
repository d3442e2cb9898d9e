"""The pre- and post-processing every backend shares, so differences between formats come from the
model, not the code. numpy and OpenCV only: it runs in the train environment and in the convert
environment (numpy 1.26, no ultralytics), where the RKNN simulator and the board script use it too.

Pre-processing is ultralytics' LetterBox (keep the aspect ratio, pad with grey 114 to the input size,
centred), BGR -> RGB, /255, NCHW float32. Post-processing decodes the standard YOLO head output
(1, 4 + classes, anchors) with boxes as centre x, centre y, width, height in input pixels, keeps
scores above `conf`, runs greedy NMS, and scales the boxes back to original pixels.
"""
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


def nms(boxes: np.ndarray, scores: np.ndarray, iou: float) -> np.ndarray:
    """Greedy NMS on xyxy boxes; indices kept, best first. Ties keep anchor order (a stable sort):
    INT8 scores tie often, and numpy versions order ties differently otherwise."""
    order = np.argsort(-scores, kind="stable")
    areas = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    keep = []
    while order.size:
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


def decode(output: np.ndarray, conf: float, iou: float, max_det: int):
    """Standard head output (4 + classes, anchors) for one image -> xyxy boxes (input pixels), scores,
    class ids, at most `max_det`, best first. Class-aware NMS, as ultralytics does."""
    boxes_cxcywh, class_scores = output[:4].T, output[4:].T
    cls = class_scores.argmax(1)
    scores = class_scores[np.arange(len(cls)), cls]
    keep = scores > conf
    boxes_cxcywh, scores, cls = boxes_cxcywh[keep], scores[keep], cls[keep]
    xy, wh = boxes_cxcywh[:, :2], boxes_cxcywh[:, 2:4]
    boxes = np.concatenate([xy - wh / 2, xy + wh / 2], 1)
    kept = []
    for c in np.unique(cls):
        idx = np.nonzero(cls == c)[0]
        kept.append(idx[nms(boxes[idx], scores[idx], iou)])
    idx = np.concatenate(kept) if kept else np.zeros(0, dtype=np.int64)
    idx = idx[np.argsort(-scores[idx], kind="stable")][:max_det]
    return boxes[idx], scores[idx], cls[idx]


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


def join_rknn_head(boxes: np.ndarray, scores: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """The quantization-friendly head's two outputs -> the standard (N, 4 + classes, anchors) layout:
    boxes come normalised by (w, h, w, h) and go back to input pixels."""
    h, w = size
    scale = np.array([w, h, w, h], dtype=np.float32).reshape(1, 4, 1)
    return np.concatenate([boxes * scale, scores], axis=1)
