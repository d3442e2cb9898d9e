"""Detections drawn on images or a video, by the same model, letterbox and decode the evaluator uses.

artifacts/<exp>/predict/<format>/<image name>     each image with its boxes and scores drawn
artifacts/<exp>/predict/<format>/<video stem>.mp4  a video with its boxes drawn, frame for frame
artifacts/<exp>/predict/<format>/detections.json   file -> boxes (xyxy) and scores in original pixels

The formats' models are the evaluator's: pt is weights/best.pt, onnx is models/<exp>.onnx (what
metrics/onnx.json measures), rknn is models/<exp>_<dtype>_<platform>.rknn. rknn-toolkit2's simulator
runs only a model built in its own process, so rknn rebuilds that model from its ONNX, calibration
list and settings, after checking they are the ones the .rknn was built from (its manifest): the
simulator then runs the very model metrics/rknn.json measured.

Only numpy, OpenCV and the project's own code at the top: this module runs in the train environment
(pt, onnx) and in the convert environment (rknn: numpy 1.26, no ultralytics); each backend is
imported when it is used.
"""
import importlib.util
import json
import os
import time
from pathlib import Path

import cv2
import numpy as np
from tqdm import tqdm

from services.common import backends, decode, files, manifest, paths
from services.common.layout import Experiment
from services.common.log import UserError, info, table

STAGE = "predict"
FORMATS = backends.FORMATS
DISPLAY_CONF = 0.25  # for looking at; AP needs evaluate.conf (0.001), which would draw hundreds of boxes
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp"}
LABEL = "person"  # the one class (evaluate.CATEGORY_IDS)
EXAMPLE = "e.g. SOURCE=datasets/demo/yolo/val/images"


# ---------------------------------------------------------------------------------------- source
def find_source(source: str, root: Path) -> tuple[str, Path, list[Path]]:
    """("images" or "video", the resolved SOURCE, its images in name order or [the video]); every bad
    SOURCE is one line."""
    path = Path(source).expanduser()
    if not path.is_absolute() and not path.exists() and (root / path).exists():
        path = root / path  # relative to the project's data, as every other path in the pipeline
    if not path.exists():
        raise UserError(f"SOURCE {source} does not exist; give an image, a folder of images or a video "
                        f"({EXAMPLE})")
    if path.is_dir():
        images = sorted(p for p in path.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
        if not images:
            raise UserError(f"folder {paths.rel(path, root)} has no images ({', '.join(sorted(IMAGE_SUFFIXES))}); "
                            f"point SOURCE at a folder of images, one image or a video ({EXAMPLE})")
        bad = [p for p in images if not cv2.haveImageReader(str(p))]
        if bad:
            raise UserError(f"{len(bad)} image(s) in {paths.rel(path, root)} cannot be read (e.g. {bad[0].name}); "
                            f"remove or replace them, or point SOURCE at another folder")
        return "images", path.resolve(), images
    if path.suffix.lower() in IMAGE_SUFFIXES:
        if cv2.imread(str(path)) is None:
            raise UserError(f"{paths.rel(path, root)} is not a readable image; give a .jpg or .png that opens")
        return "images", path.resolve(), [path]
    os.environ.setdefault("OPENCV_FFMPEG_LOGLEVEL", "-8")  # FFmpeg's own lines ("moov atom not found") above ours
    cap = cv2.VideoCapture(str(path))
    try:
        ok = cap.isOpened() and cap.read()[0]
    finally:
        cap.release()
    if not ok:
        raise UserError(f"OpenCV cannot open {paths.rel(path, root)} as a video; give a video it reads (.mp4, .avi, "
                        f".mkv), an image ({', '.join(sorted(IMAGE_SUFFIXES))}) or a folder of images")
    return "video", path.resolve(), [path]


# ---------------------------------------------------------------------------------------- models
def model_path(cfg: dict, fmt: str, root: Path) -> Path:
    """The file the evaluator (pt, onnx) or the convert stage (rknn) measured; missing: which target builds it."""
    e, exp = cfg["evaluate"], Experiment.of(cfg, root)
    if fmt == "rknn":
        path, target = exp.rknn(cfg["convert"]), "make convert"
    else:
        default = exp.best if fmt == "pt" else exp.onnx
        path = Path(e["weights"]) if e["weights"] else default  # as evaluate.formats_to_run
        path = path if path.is_absolute() else root / path
        target = "make fit" if fmt == "pt" else "make export"
    if not path.is_file():
        also = "" if fmt == "rknn" else ", or set evaluate.weights=PATH"
        raise UserError(f"no {fmt} model at {paths.rel(path, root)}; run `{target}` first{also}")
    suffix = "." + fmt
    if path.suffix != suffix:
        raise UserError(f"FORMAT={fmt} but {paths.rel(path, root)} is not a {suffix} file; set FORMAT to match it")
    if fmt == "pt" and importlib.util.find_spec("ultralytics") is None:
        raise UserError("this environment has no ultralytics to load a .pt checkpoint; run `make predict FORMAT=pt` "
                        "(the train environment)")
    if fmt == "rknn" and importlib.util.find_spec("rknn") is None:
        raise UserError("this environment has no rknn-toolkit2; run `make predict FORMAT=rknn` "
                        "(the convert environment)")
    return path


class RknnModel:
    """The .rknn's model, rebuilt in this process so the simulator can run it. Constructing it is quick
    and says whether the .rknn was built from today's ONNX, calibration list and settings; build() is
    the slow part."""

    def __init__(self, cfg: dict, rknn_file: Path, root: Path):
        from services.common import toolkit
        self.cfg, self.root, self.toolkit = cfg, root, toolkit
        self.exp = Experiment.of(cfg, root)
        self.size, self.layout = toolkit.check_onnx(self.exp.rknn_head_onnx, root)
        self.images = toolkit.calibration_images(cfg, root)
        built = files.read_json(self.exp.manifest_of(rknn_file)) or {}
        now = toolkit.model_fingerprint(cfg, self.exp.rknn_head_onnx, self.images, root)
        was = built.get("fingerprint") or {}
        differs = [k for k in now if was.get(k) != now[k]]
        if differs:
            raise UserError(f"{paths.rel(rknn_file, root)} was built from other inputs than today's "
                            f"({', '.join(differs)} differ); run `make convert` so it matches, then predict again")
        self.rknn = None

    def build(self, log: Path):
        """The convert stage's build sequence, then the simulator: returns the evaluator's backend."""
        self.kit = self.toolkit.Toolkit(log)
        listing = self.toolkit.calibration_listing(self.cfg, self.exp, self.images, self.size)
        self.rknn = self.kit.new()
        self.kit.build(self.rknn, self.cfg["convert"], self.exp.rknn_head_onnx, listing, self.exp.toolkit_work)
        return self.kit.simulator(self.rknn, self.size, self.layout)

    def release(self):
        if self.rknn is not None:
            self.kit.release(self.rknn)


def load_backend(cfg: dict, fmt: str, model: Path, root: Path, rknn_model=None):
    """(backend, input size (h, w)): the evaluator's backend for pt and onnx, the simulator for rknn."""
    if fmt == "rknn":
        log = Experiment.of(cfg, root).predict("rknn").parent / "rknn-toolkit.log"
        log.parent.mkdir(parents=True, exist_ok=True)
        log.write_text("")
        info(STAGE, f"building {paths.rel(model, root)}'s model again for the simulator (it runs only models built "
                    f"in its own process); rknn-toolkit2's messages go to {paths.rel(log, root)}")
        return rknn_model.build(log), rknn_model.size
    e = cfg["evaluate"]
    backend = backends.backend_for(fmt, model, e["max_det"])  # max_det: a one-to-one head's (YOLO26) own top-k
    # the evaluator's input size; an ONNX model's is static and fixed at export
    size = backend.size if fmt == "onnx" else decode.input_size(e["imgsz"] or cfg["export"]["imgsz"]
                                                                   or cfg["train"]["imgsz"])
    return backend, tuple(int(v) for v in size)


# ---------------------------------------------------------------------------------------- detecting
def detect(backend, image: np.ndarray, size, conf: float, iou: float, max_det: int):
    """One BGR frame -> original-pixel xyxy boxes and scores, as evaluate.detect decodes them."""
    x, meta = decode.preprocess(image, size)
    boxes, scores, _ = decode.postprocess(backend(x), backend.layout, size, conf, iou, max_det)
    return decode.scale_boxes(boxes, meta), scores


def draw(image: np.ndarray, boxes: np.ndarray, scores: np.ndarray) -> np.ndarray:
    thick = max(1, round(max(image.shape[:2]) / 640))
    for b, s in zip(boxes.round().astype(int), scores):
        cv2.rectangle(image, (int(b[0]), int(b[1])), (int(b[2]), int(b[3])), (0, 255, 0), thick)
        cv2.putText(image, f"{LABEL} {s:.2f}", (int(b[0]), max(int(b[1]) - 4, 10)), cv2.FONT_HERSHEY_SIMPLEX,
                    0.4 * thick, (0, 255, 0), thick)
    return image


def as_json(boxes: np.ndarray, scores: np.ndarray) -> dict:
    return {"boxes": [[round(float(v), 2) for v in b] for b in boxes], "scores": [round(float(s), 5) for s in scores]}


def predict_images(backend, images: list[Path], size, settings: dict, out: Path, latency: list) -> dict:
    found = {}
    for path in tqdm(images, desc=STAGE, unit="image", mininterval=0.5):
        image = cv2.imread(str(path))
        if image is None:
            raise UserError(f"cannot read {paths.rel(path)}; remove or replace it, then predict again")
        t0 = time.perf_counter()
        boxes, scores = detect(backend, image, size, **settings)
        latency.append((time.perf_counter() - t0) * 1000)
        cv2.imwrite(str(out / path.name), draw(image, boxes, scores))
        found[path.name] = {"width": image.shape[1], "height": image.shape[0], **as_json(boxes, scores)}
    return found


def predict_video(backend, video: Path, size, settings: dict, out: Path, latency: list) -> dict:
    cap = cv2.VideoCapture(str(video))
    fps = cap.get(cv2.CAP_PROP_FPS) or 25.0
    total = int(cap.get(cv2.CAP_PROP_FRAME_COUNT)) or None
    name = f"{video.stem}.mp4"
    writer, frames, shape = None, [], None
    try:
        with tqdm(total=total, desc=STAGE, unit="frame", mininterval=0.5) as bar:
            while True:
                ok, frame = cap.read()
                if not ok:
                    break
                if writer is None:
                    shape = frame.shape
                    writer = cv2.VideoWriter(str(out / name), cv2.VideoWriter_fourcc(*"mp4v"), fps,
                                             (shape[1], shape[0]))
                    if not writer.isOpened():
                        raise UserError("OpenCV cannot write an .mp4 (mp4v) here; its build lacks the codec, "
                                        "give a folder of images instead")
                t0 = time.perf_counter()
                boxes, scores = detect(backend, frame, size, **settings)
                latency.append((time.perf_counter() - t0) * 1000)
                writer.write(draw(frame, boxes, scores))
                frames.append(as_json(boxes, scores))
                bar.update()
    finally:
        cap.release()
        if writer is not None:
            writer.release()
    return {name: {"source": video.name, "width": shape[1], "height": shape[0], "fps": round(fps, 3),
                   "frames": frames}}


# ---------------------------------------------------------------------------------------- stage
def run(cfg: dict, source: str, fmt: str = "pt", conf: float = DISPLAY_CONF, root: Path = paths.ROOT) -> dict:
    """Everything is checked (source, model, the .rknn's inputs) before the model is loaded."""
    if fmt not in FORMATS:
        raise UserError(f"FORMAT={fmt} is not a model format; use FORMAT=pt, FORMAT=onnx or FORMAT=rknn")
    kind, src, inputs = find_source(source, root)
    model = model_path(cfg, fmt, root)
    rknn_model = RknnModel(cfg, model, root) if fmt == "rknn" else None
    e = cfg["evaluate"]
    settings = {"conf": conf, "iou": e["iou"], "max_det": e["max_det"]}
    final = Experiment.of(cfg, root).predict(fmt)
    model_sha = files.sha256_file(model)
    try:
        backend, size = load_backend(cfg, fmt, model, root, rknn_model)
        latency = []
        t0 = time.perf_counter()
        with files.build_dir(final, same_inputs=same_run(final, str(src), model_sha, settings)) as build:
            predict = predict_images if kind == "images" else predict_video
            found = predict(backend, inputs if kind == "images" else inputs[0], size, settings, build.path, latency)
            lat = np.asarray(latency)
            result = {**manifest.provenance(STAGE, cfg, ["numpy", "opencv-python", "onnxruntime", "torch",
                                                         "rknn-toolkit2"]),
                      "source": str(src), "kind": kind, "format": fmt, "model": paths.rel(model, root),
                      "model_sha256": model_sha, "device": backend.device, "imgsz_hw": list(size),
                      "settings": settings, "layout": backend.layout,
                      "note": f"conf {conf} is a display threshold; the evaluation keeps every box above "
                              f"evaluate.conf={e['conf']} (for AP), and predicting with --conf {e['conf']} "
                              f"lists exactly its boxes",
                      "ms_per_frame": {"mean": round(float(lat.mean()), 2),
                                       "p50": round(float(np.percentile(lat, 50)), 2),
                                       "includes": "letterbox, inference, decode, NMS"},
                      "outputs": sorted(found), "files": found, "created": manifest.now()}
            (build.path / "detections.json").write_text(json.dumps(result, indent=1) + "\n")
    finally:
        if rknn_model is not None:
            rknn_model.release()
    if build.moved_aside:
        info(STAGE, f"the earlier predictions (another source, model or setting, or files of yours beside them) "
                    f"moved to {paths.rel(build.moved_aside, root)}")
    frames = sum(len(f["frames"]) if "frames" in f else 1 for f in found.values())
    detections = sum(sum(len(x["boxes"]) for x in f["frames"]) if "frames" in f else len(f["boxes"])
                     for f in found.values())
    print(table(["format", "source", "files", "frames", "detections", "score >", "ms/frame", "output"],
                [[fmt, paths.rel(src, root), len(found), frames, detections, conf,
                  f"{result['ms_per_frame']['mean']:.1f}", paths.rel(final, root)]],
                title=f"\npredictions ({backend.device}; {time.perf_counter() - t0:.1f} s)"))
    return result


def same_run(final: Path, source: str, model_sha: str, settings: dict) -> bool:
    """The folder holds only an earlier run's output for the very same source, model and settings: replace it
    (a rerun). Anything else (other inputs, a file you put there) is moved aside, never deleted."""
    old = files.read_json(final / "detections.json")
    if not old or (old.get("source"), old.get("model_sha256"), old.get("settings")) != (source, model_sha, settings):
        return False
    return set(os.listdir(final)) <= set(old.get("outputs", [])) | {"detections.json"}
