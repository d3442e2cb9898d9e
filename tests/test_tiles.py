"""Sliced inference (evaluate.tiles, the board's --tiles): the tiling and the merging in
services/common/decode.py, the evaluator's and the board pipeline's use of them, and their bad input.

The detector here is a stand-in that needs no model: it finds the white blocks of each model input
(OpenCV's connected components) and returns their boxes in the end2end layout (x1, y1, x2, y2, score,
class in input pixels). So what a test sees is the geometry alone: cutting, letterboxing, scaling
back, joining the parts of a box a tile edge cut, and the one NMS over the frame."""
import json
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

from tests.helpers import ROOT, one_error, run_module
from services.board import detect as board_detect, pipeline
from services.board.backends import TiledContext
from services.common import decode
from services.common.log import UserError
from services.evaluate import evaluate

E = {"conf": 0.25, "iou": 0.7, "max_det": 300, "batch": 1, "tiles": 1, "tile_overlap": 0.1}


def blob_detector(rgb: np.ndarray) -> list:
    """One (h, w, 3) model input -> end2end outputs: a box around every white block, score 0.9."""
    mask = (rgb.min(-1) > 200).astype(np.uint8)
    _, _, stats, _ = cv2.connectedComponentsWithStats(mask)
    out = np.zeros((1, 300, 6), np.float32)
    for k, (x, y, w, h, _) in enumerate(stats[1:]):
        out[0, k] = [x, y, x + w, y + h, 0.9, 0]
    return [out]


class BlobBackend:
    """The evaluator's backend interface around blob_detector: (n, 3, h, w) floats in 0..1."""
    name, layout, device = "blob", "end2end", "test"

    def __init__(self, batch_ok=False):
        self.batch_ok, self.calls = batch_ok, []

    def __call__(self, x: np.ndarray) -> list:
        self.calls.append(len(x))
        outs = [blob_detector(np.rint(xi.transpose(1, 2, 0) * 255)) for xi in x]
        return [np.concatenate([o[0] for o in outs])]


class BlobContext:
    """A board context around blob_detector: (1, h, w, 3) uint8 RGB in, as the NPU takes it."""

    def __init__(self, core):
        self.core, self.runtime, self.released = core, "blob", False

    def run(self, tensor: np.ndarray) -> list:
        return blob_detector(tensor[0])

    def release(self):
        self.released = True


def frame(blocks, hw=(512, 1024)) -> np.ndarray:
    """A dark frame with white blocks (x0, y0, x1, y1)."""
    image = np.full((*hw, 3), 30, np.uint8)
    for x0, y0, x1, y1 in blocks:
        image[y0:y1, x0:x1] = 255
    return image


def tiled(image, size, tiles, overlap=0.1, merge=True):
    """The evaluator's path for one frame, with the blob detector: tiles in, the frame's boxes out."""
    x, metas = decode.preprocess_tiles(image, size, tiles, overlap)
    per_tile = [decode.postprocess(blob_detector(np.rint(xi.transpose(1, 2, 0) * 255)), "end2end", size, 0.25,
                                   0.7, 300) for xi in x]
    if merge:
        return decode.merge_tiles(per_tile, metas, 0.7, 300)[0]
    shifted = [decode.scale_boxes(b, meta) + np.array([*origin, *origin]) for (b, _, _), (meta, origin)
               in zip(per_tile, metas)]
    boxes = np.concatenate(shifted).astype(np.float32)
    scores = np.concatenate([s for _, s, _ in per_tile])
    return decode.select(boxes, scores, np.zeros(len(boxes), np.int64), 0.7, 300)[0]


# ------------------------------------------------------------------------------------------ windows
def test_windows_cover_the_frame_along_its_long_side_with_the_overlap():
    assert decode.tile_windows((1024, 2048), 1, 0.1) == [(0, 0, 2048, 1024)]
    for tiles in (2, 3, 5):
        windows = decode.tile_windows((1024, 2048), tiles, 0.1)
        length = windows[0][2] - windows[0][0]
        assert len(windows) == tiles and windows[0][0] == 0 and windows[-1][2] == 2048
        assert all(w[1] == 0 and w[3] == 1024 and w[2] - w[0] == length for w in windows)
        assert all(a[2] - b[0] >= 0.1 * length - 1 for a, b in zip(windows, windows[1:]))  # neighbours overlap
    assert decode.tile_windows((2048, 1024), 2, 0.0) == [(0, 0, 1024, 1024), (0, 1024, 1024, 2048)]  # portrait


def test_tiles_smaller_than_the_model_input_are_refused():
    with pytest.raises(ValueError, match=r"tiles=3 cuts a 640x480 frame into 221x480 tiles, smaller than the "
                                         r"model input 1280x640 on both sides"):
        decode.check_tiles((480, 640), (640, 1280), 3, 0.05)
    assert len(decode.check_tiles((1024, 2048), (1024, 736), 3, 0.1)) == 3  # 732x1024 tiles: as tall as the input
    with pytest.raises(ValueError, match="from 0 to below 1"):
        decode.tile_windows((1024, 2048), 2, 1.0)


# ------------------------------------------------------------------------------------------ one tile
def test_one_tile_is_todays_letterbox_exactly():
    rng = np.random.default_rng(0)
    image = rng.integers(0, 255, (300, 700, 3), dtype=np.uint8)
    x, metas = decode.preprocess_tiles(image, (256, 320), 1, 0.1)
    x_old, meta_old = decode.preprocess(image, (256, 320))
    assert x.dtype == x_old.dtype and np.array_equal(x, x_old) and metas == [(meta_old, (0, 0))]
    raw = [rng.random((1, 5, 1680), dtype=np.float32) * np.array([320, 256, 60, 90, 1], np.float32)[None, :, None]]
    per_tile = [decode.postprocess(raw, "standard", (256, 320), 0.3, 0.7, 300)]
    new = decode.merge_tiles(per_tile, metas, 0.7, 300)
    old = decode.postprocess(raw, "standard", (256, 320), 0.3, 0.7, 300)
    assert np.array_equal(new[0], decode.scale_boxes(old[0], meta_old))
    assert np.array_equal(new[1], old[1]) and np.array_equal(new[2], old[2])


def test_the_evaluators_detections_with_one_tile_are_todays(tmp_path):
    """evaluate.detect with tiles=1 against the code it replaced, batched and not."""
    rng = np.random.default_rng(1)
    images = []
    for i, (h, w) in enumerate([(256, 512), (300, 400), (256, 512)]):
        blocks = [(int(rng.integers(0, w - 60)), int(rng.integers(0, h - 90)), 0, 0) for _ in range(4)]
        cv2.imwrite(str(tmp_path / f"{i}.png"), frame([(x, y, x + 40, y + 80) for x, y, _, _ in blocks], (h, w)))
        images.append({"id": i + 1, "file_name": f"{i}.png"})
    for batch_ok in (False, True):
        e = {**E, "batch": 2}
        new, _ = evaluate.detect(BlobBackend(batch_ok), images, tmp_path, (256, 320), e)
        old = []  # the evaluator before tiles, line for line
        backend, batch = BlobBackend(batch_ok), 2 if batch_ok else 1
        for start in range(0, len(images), batch):
            chunk = images[start:start + batch]
            inputs, metas = zip(*[decode.preprocess(cv2.imread(str(tmp_path / im["file_name"])), (256, 320))
                                  for im in chunk])
            out = backend(np.concatenate(inputs))
            for j, (im, meta) in enumerate(zip(chunk, metas)):
                boxes, scores, cls = decode.postprocess([o[j:j + 1] for o in out], backend.layout, (256, 320),
                                                        e["conf"], e["iou"], e["max_det"])
                old += decode.to_coco(im["id"], decode.scale_boxes(boxes, meta), scores, cls, [1])
        assert new == old and len(new) >= 6  # random blocks: some touch and become one


def test_the_evaluator_batches_tiles_as_the_backend_allows(tmp_path):
    """Two frames of 2 tiles with batch 3: the tiles go in batches of at most 3 (3, then 1), and give
    the detections of one tile per call; a straddling block comes out once per frame."""
    for i in range(2):
        cv2.imwrite(str(tmp_path / f"{i}.png"), frame([(400 + 10 * i, 100, 640, 400), (30, 30, 90, 200)]))
    images = [{"id": i + 1, "file_name": f"{i}.png"} for i in range(2)]
    batched, single = BlobBackend(batch_ok=True), BlobBackend(batch_ok=False)
    e = {**E, "batch": 3, "tiles": 2}
    dets, _ = evaluate.detect(batched, images, tmp_path, (512, 544), e)
    assert dets == evaluate.detect(single, images, tmp_path, (512, 544), e)[0]
    assert batched.calls == [3, 1] and single.calls == [1, 1, 1, 1] and len(dets) == 4


# ------------------------------------------------------------------------------------------ merging
def test_a_box_cut_by_a_tile_edge_comes_out_once_and_whole():
    size = (512, 544)  # 2 tiles of a 1024x512 frame: windows x 0..539 and 485..1024, at scale 1
    image = frame([(400, 100, 640, 400)])  # wider than the overlap: each tile sees a part of it
    boxes = tiled(image, size, 2)
    assert len(boxes) == 1 and np.allclose(boxes[0], [400, 100, 640, 400], atol=2), boxes
    assert len(tiled(image, size, 2, merge=False)) == 2  # NMS alone keeps both halves


def test_boxes_in_the_overlap_or_half_in_it_come_out_once_and_whole():
    size = (512, 544)
    whole_in_both, half_in_one = (500, 50, 530, 120), (450, 200, 520, 300)  # the second is cut by tile b's edge
    boxes = tiled(frame([whole_in_both, half_in_one]), size, 2)
    boxes = boxes[np.argsort(boxes[:, 1])]
    assert len(boxes) == 2 and np.allclose(boxes, [whole_in_both, half_in_one], atol=2), boxes


def test_neighbours_at_a_tile_edge_stay_apart():
    """A cut box is joined to the part that agrees with it inside the overlap, not to a neighbour."""
    size = (512, 544)
    people = [(420, 100, 520, 400), (525, 110, 600, 380), (200, 100, 260, 250), (900, 50, 1000, 500)]
    boxes = tiled(frame(people), size, 2)
    boxes = boxes[np.argsort(boxes[:, 0])]
    assert len(boxes) == 4 and np.allclose(boxes, sorted(people), atol=2), boxes


def test_three_tiles_and_a_box_across_the_middle_tile():
    size = (512, 384)  # 3 tiles of 1024x512: 366 px each
    wide = (150, 60, 900, 300)  # cut by every inner edge: three parts, one box
    small = [(30, 400, 60, 470), (700, 400, 730, 470)]
    boxes = tiled(frame([wide, *small]), size, 3)
    boxes = boxes[np.argsort(boxes[:, 1])]
    assert len(boxes) == 3 and np.allclose(boxes[0], wide, atol=2), boxes


# ------------------------------------------------------------------------------------------ evaluator
def test_the_evaluator_refuses_tiles_smaller_than_the_input_in_one_line(tmp_path):
    cv2.imwrite(str(tmp_path / "small.png"), frame([], (200, 300)))
    with pytest.raises(UserError) as err:
        evaluate.frame_inputs(tmp_path / "small.png", (256, 320), {**E, "tiles": 3})
    assert "evaluate.tiles=3 cuts a 300x200 frame into" in str(err.value) and "\n" not in str(err.value)


def test_the_fingerprint_holds_the_tiling(tmp_path):
    weights = tmp_path / "w.onnx"
    weights.write_bytes(b"x")
    e = {**E, "sets": ["val"]}
    prints = [evaluate.evaluation_fingerprint({**e, **t}, (640, 1280), weights, {})
              for t in ({}, {"tiles": 3}, {"tiles": 3, "tile_overlap": 0.2})]
    assert prints[0] != prints[1] != prints[2] and prints[0]["evaluate"]["tiles"] == 1


@pytest.mark.parametrize("override, expected", [
    ("evaluate.tile_overlap=1", "evaluate: error: evaluate.tile_overlap=1.0 is the share of a tile its neighbour"),
    ("evaluate.tiles=0", "evaluate: error: override: evaluate.tiles=0 is out of range"),
])
def test_bad_tile_settings_are_one_line_before_any_work(tmp_path, override, expected):
    proc = run_module("evaluate", ["--config", str(ROOT / "configs/demo.yaml"), override], tmp_path, timeout=120)
    assert proc.returncode == 2 and one_error(proc).startswith(expected), proc.stderr
    assert not any(tmp_path.iterdir())


# ------------------------------------------------------------------------------------------ board
def test_the_board_pipeline_with_tiles_gives_the_evaluators_detections(tmp_path):
    """Frames through the board's pipeline with a TiledContext (one context per tile, at once) give
    the detections of the evaluator's tiled path, frame by frame, and release every context."""
    size, images = (512, 544), [frame([(400, 100, 640, 400), (30, 30, 90, 200)]), frame([(480, 60, 560, 500)])]
    contexts = [BlobContext(0), BlobContext(1)]
    tiled_ctx = TiledContext(contexts)
    pre = pipeline.tiled_preprocessor(size, 2, 0.1)
    post = pipeline.tiled_postprocessor("end2end", size, 0.25, 0.7, 300)
    frames = list(pipeline.pipeline(iter([(f"{i}.png", im) for i, im in enumerate(images)]), [tiled_ctx], pre, post))
    tiled_ctx.release()
    assert all(c.released for c in contexts) and [f.core for f in frames] == [[0, 1], [0, 1]]
    for f, image in zip(frames, images):
        ours = tiled(image, size, 2)
        assert np.allclose(f.boxes[np.argsort(f.boxes[:, 0])], ours[np.argsort(ours[:, 0])], atol=0.01)


def test_board_tiles_the_input_cannot_carry_is_one_line_before_any_context(tmp_path, capsys):
    folder = tmp_path / "bundle"
    folder.mkdir()
    (folder / "m.onnx").write_text("never loaded: the check comes first\n")
    (folder / "bundle.json").write_text(json.dumps({
        "imgsz_hw": [640, 1280], "layout": "dfl", "platform": "rk3588", "toolkit_version": "2.3.2",
        "model": "m.rknn", "onnx": "m.onnx", "iou": 0.7, "max_det": 300, "category_ids": [1]}))
    cv2.imwrite(str(tmp_path / "small.jpg"), frame([], (480, 640)))
    for args, expected in ((["--tiles", "3"], "error: --tiles=3 cuts a 640x480 frame into"),
                           (["--tiles", "2", "--tile-overlap", "1"], "error: --tiles 2 --tile-overlap 1.0"),
                           # out of range also where no tiling would happen: a mistake, not a request
                           (["--tiles", "0"], "error: --tiles 0 --tile-overlap 0.1: tiles go from 1 to 16"),
                           (["--tiles", "17"], "error: --tiles 17 --tile-overlap 0.1: tiles go from 1 to 16"),
                           (["--tile-overlap", "-0.5"], "error: --tiles 1 --tile-overlap -0.5")):
        code = board_detect.main(folder, [str(tmp_path / "small.jpg"), "--backend", "onnx", *args,
                                          "--report", str(tmp_path / "r.json")])
        err = capsys.readouterr().err.strip().splitlines()
        assert code == 2 and len(err) == 1 and err[0].startswith(expected), err
    assert not (tmp_path / "r.json").exists()


def test_decode_stays_numpy_and_opencv_only():
    """The board bundle copies decode.py as its yolo_core.py: it imports nothing else."""
    import ast
    tree = ast.parse((ROOT / "services/common/decode.py").read_text())
    imported = {a.name.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    imported |= {n.module.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
    assert imported <= {"math", "cv2", "numpy"} | set(sys.stdlib_module_names) - {"services"}, imported


def test_the_convert_disk_estimate_counts_the_tiled_calibration_copies(tmp_path):
    """With evaluate.tiles the quantizer is calibrated on tiles, cached in a folder of their own: the
    untiled cache of an earlier build does not spare that space in the estimate the convert stage
    checks before any work."""
    from services.common import config, space
    from services.common.layout import Experiment
    cfg = config.load(ROOT / "configs" / "demo.yaml", ["evaluate.tiles=3"])
    exp, h = Experiment.of(cfg, tmp_path), cfg["train"]["imgsz"]
    exp.calibration_copies((h, h)).mkdir(parents=True)
    _, untiled_only, _ = space.convert_need(cfg, tmp_path)
    exp.calibration_copies((h, h), 3, cfg["evaluate"]["tile_overlap"]).mkdir(parents=True)
    _, both, _ = space.convert_need(cfg, tmp_path)
    assert untiled_only - both == cfg["dataset"]["calib_images"] * h * h * 3 // 2


def test_every_int8_build_is_calibrated_on_the_tiles_the_model_is_evaluated_on(tmp_path):
    """The convert stage and predict's rebuild for the simulator take their calibration list from one
    place, which reads the tiling from the config: with evaluate.tiles=3 the k-th image gives its
    (k mod 3)-th tile, letterboxed, not the whole frame (predict once calibrated on whole frames)."""
    from services.common import config, toolkit
    from services.common.layout import Experiment
    frames = []
    for k in range(3):
        frame = np.full((256, 512, 3), 40 * k, np.uint8)
        frames.append(tmp_path / f"frame{k}.png")
        cv2.imwrite(str(frames[-1]), frame)
    for tiles in (1, 3):
        cfg = config.load(ROOT / "configs" / "demo.yaml", [f"evaluate.tiles={tiles}"])
        exp = Experiment.of(cfg, tmp_path)
        listing = toolkit.calibration_listing(cfg, exp, frames, (128, 128))
        copies = [Path(line) for line in listing.read_text().splitlines()]
        want = exp.calibration_copies((128, 128), tiles, cfg["evaluate"]["tile_overlap"])
        assert listing == want.with_name(f"{want.name}.txt") and len(copies) == 3
        assert all(p.parent == want.resolve() for p in copies)
        tiled = [(p.name.split(".")[0], p.name.split(".")[-2]) for p in copies if ".tile" in p.name]
        assert tiled == ([] if tiles == 1 else [("frame0", "tile0"), ("frame1", "tile1"), ("frame2", "tile2")])
