"""The CityPersons-scale proxy: the demo's figures drawn at the real boxes of the real annotations.

`python -m services.dataset proxy` (or dataset.generate_proxy) writes datasets/proxy/raw/ in the raw
CityPersons layout, leftImg8bit/{train,val}/<city>/<im_name> plus anno_train.mat and anno_val.mat,
for images chosen from the real anno_train.mat / anno_val.mat. Each frame is 2048x1024, as a
Cityscapes image: the demo's street (horizon, buildings, poles, trees, cars; demo.py), drawn at 4x,
and for every bbs row of the real image, at its real position and size, a figure drawn with the
demo's functions:

    class 1 pedestrian   a figure filling the full-body box; where the visible box is smaller, an
                         occluder (a car below, a board or pillar beside or above) hides the rest
    class 2 rider        the same on a bicycle
    class 3, 4           sitting / other person: a figure in the box
    class 5 group        several overlapping figures in the box
    class 0 ignore       a poster with a printed figure

Posters first, then the other boxes from small (far) to large (near), so near ones overlap far ones.
The written .mat files hold the real rows of the chosen images, unchanged, under the real image
names and cities: the dataset converter, the label policy, the ignore regions and the miss-rate
setups (Reasonable, All, ...) apply exactly as to the real data. The same seed and .mat files give
the same bytes. Nothing here reads a Cityscapes image: only the two public annotation files.
"""
import json
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw
from tqdm import tqdm

from services.common import files, paths
from services.common.log import UserError, info

from . import demo
from .citypersons import read_mat

# Bump when the pictures or the choice of images change: an older proxy is then regenerated. The
# figures are the demo's, so its version is part of the parameters too (demo.GENERATOR_VERSION).
GENERATOR_VERSION = 1
SIZE = (2048, 1024)  # Cityscapes leftImg8bit: the real boxes are in these pixels
STREET_SCALE = 4     # the demo's street is drawn for 512x256; here at 4x
# Sensor noise, uniform in [-NOISE, NOISE] per channel, one value per NOISE_CELL x NOISE_CELL pixels.
# Once a frame is scaled to a 640-pixel network input it is as strong as the demo's +-12 per pixel
# would be (std ~2.3 either way), and the PNG is ~1.5 MB (Cityscapes: ~2.2 MB) instead of ~4.5 MB,
# written 3x faster.
NOISE = 6
NOISE_CELL = 2
PNG_LEVEL = 1        # zlib level: PIL's default 6 takes ~5x longer for a 10 % smaller file
SPLITS = ("train", "val")
FIX = "put the CityPersons anno_train.mat and anno_val.mat there (`make dataset EXP=citypersons` downloads them)"


def parameters(seed: int, n_train: int, n_val: int, sources: dict) -> dict:
    """What generator.json records; a proxy is regenerated when these differ. `sources`: the
    sha256 of the source anno_train.mat and anno_val.mat."""
    return {"generator": "proxy", "generator_version": GENERATOR_VERSION,
            "demo_generator_version": demo.GENERATOR_VERSION, "seed": seed, "n_train": n_train,
            "n_val": n_val, "size": list(SIZE), "source_sha256": dict(sources)}


def source_files(mat_dir: Path, out: Path, how: str = "set dataset.proxy_annotations=DIR") -> dict:
    """{split: path} of the real annotation files in `mat_dir`, or one UserError naming what is
    missing and the fix (`how`: the option that points elsewhere)."""
    mat_dir = Path(mat_dir)
    mats = {split: mat_dir / f"anno_{split}.mat" for split in SPLITS}
    missing = [paths.rel(p) for p in mats.values() if not p.is_file()]
    if missing:
        raise UserError(f"the CityPersons-scale proxy is drawn from the real CityPersons annotations, but "
                        f"{' and '.join(missing)} {'is' if len(missing) == 1 else 'are'} missing; "
                        f"{FIX.replace('there', f'in {paths.rel(mat_dir)}/')} or {how}")
    if Path(out).resolve() == mat_dir.resolve():
        raise UserError(f"the proxy would be written into {paths.rel(out)}/, the folder holding its source "
                        f"annotations; write it elsewhere (dataset.name=proxy)")
    return mats


def ensure(out: Path, mat_dir: Path, seed: int, n_train: int, n_val: int,
           how: str = "set dataset.proxy_annotations=DIR") -> None:
    """Generate the proxy unless the one in `out` came from this generator, these parameters and
    these source .mat files; an older one is moved aside, never deleted. A folder without
    generator.json was not made here and is left alone."""
    out = Path(out)
    mats = source_files(mat_dir, out, how)
    params = parameters(seed, n_train, n_val, _digests(mats))
    if out.exists():
        made = files.read_json(out / "generator.json")
        if made is None or made == params:
            return
        changed = [k for k in params if made.get(k) != params[k]]
        info("dataset", f"the proxy in {paths.rel(out)} was made with other parameters ({', '.join(changed)})")
    main(out, mat_dir, seed, n_train, n_val, force=True, how=how)


def _digests(mats: dict) -> dict:
    return {p.name: files.sha256_file(p) for p in mats.values()}


def choose(records: list[dict], n: int, rng) -> list[int]:
    """Indices of n records, in file order: images with boxes, and images without any in the
    proportion the file has them (train 197 of 2975). Each group is taken from one permutation, so
    a larger n keeps the images a smaller one chose."""
    empty = [i for i, r in enumerate(records) if len(r["bbs"]) == 0]
    boxed = [i for i, r in enumerate(records) if len(r["bbs"])]
    n_empty = min(int(n * len(empty) / len(records) + 0.5), len(empty)) if records else 0
    n_empty = max(n_empty, n - len(boxed))
    return sorted([int(i) for i in rng.permutation(boxed)[:n - n_empty]] +
                  [int(i) for i in rng.permutation(empty)[:n_empty]])


def generate(out: Path, mat_dir: Path, seed: int = 0, n_train: int = 300, n_val: int = 100,
             how: str = "set dataset.proxy_annotations=DIR") -> dict:
    """Write the proxy download atomically into `out` (a folder that must not exist yet)."""
    return _write(Path(out), seed, n_train, n_val, *_inputs(out, mat_dir, n_train, n_val, how))


def _inputs(out: Path, mat_dir: Path, n_train: int, n_val: int, how: str):
    """The source records and their digests, after every check: nothing is touched before."""
    mats = source_files(mat_dir, out, how)
    records = {split: read_mat(mats[split], split) for split in SPLITS}
    for split, n in (("train", n_train), ("val", n_val)):
        if not 1 <= n <= len(records[split]):
            raise UserError(f"{n} {split} images asked for the proxy (dataset.proxy_{split}_images, --{split}), "
                            f"but {paths.rel(mats[split])} lists {len(records[split])}; "
                            f"ask for 1 to {len(records[split])}")
    return records, _digests(mats)


def image_rng(seed: int, split: str, index: int):
    """The stream that draws the picture of record `index` of anno_<split>.mat: one per image, so an
    image looks the same whatever else is chosen."""
    return np.random.default_rng([seed, SPLITS.index(split), index])


def _write(out: Path, seed: int, n_train: int, n_val: int, records: dict, sources: dict) -> dict:
    params = parameters(seed, n_train, n_val, sources)
    with files.build_dir(out) as build:
        for split, n in (("train", n_train), ("val", n_val)):
            chosen = choose(records[split], n, np.random.default_rng([seed, SPLITS.index(split)]))
            for i in tqdm(chosen, desc=f"proxy {split}", unit="img", mininterval=0.5, leave=False):
                r = records[split][i]
                image = frame(image_rng(seed, split, i), r["bbs"])
                folder = build.path / "leftImg8bit" / split / r["city"]
                folder.mkdir(parents=True, exist_ok=True)
                image.save(folder / r["name"], optimize=False, compress_level=PNG_LEVEL)
            demo.write_mat(build.path / f"anno_{split}.mat", split,
                           [(records[split][i]["city"], records[split][i]["name"], records[split][i]["bbs"])
                            for i in chosen])
        (build.path / "generator.json").write_text(json.dumps(params, indent=2) + "\n")
    return params


# ---------------------------------------------------------------------------------------- drawing
class _Scaled:
    """An ImageDraw taking coordinates, widths and radii `scale` times smaller: the demo's street
    and distractors, made for 512x256, drawn at full resolution with sharp edges."""

    def __init__(self, draw, scale: float):
        self.draw, self.scale = draw, scale

    def __getattr__(self, name):
        method = getattr(self.draw, name)

        def scaled(xy, **kw):
            for key in ("width", "radius"):
                if key in kw:
                    kw[key] = kw[key] * self.scale if key == "radius" else int(round(kw[key] * self.scale))
            return method([v * self.scale for v in xy], **kw)
        return scaled


def frame(rng, bbs: np.ndarray, size=SIZE) -> Image.Image:
    """One 2048x1024 street picture with a figure for every bbs row, at the row's box."""
    W, H = size
    w0, h0 = W // STREET_SCALE, H // STREET_SCALE
    # The Cityscapes camera sees the horizon near row 430 of 1024 (the feet of far pedestrians).
    horizon = int(h0 * rng.uniform(0.39, 0.45))
    img = Image.new("RGB", size, demo._color(rng, 120, 230))
    d = ImageDraw.Draw(img)
    street = _Scaled(d, STREET_SCALE)
    for _ in range(rng.integers(2, 4)):  # the demo's street has 2-6 buildings: a wide frame needs more
        demo._street(street, rng, w0, h0, horizon)
    for _ in range(rng.integers(1, 7)):  # distractors, behind everyone
        demo._distractor(street, rng, w0, h0, horizon)

    rows = [[int(v) for v in row] for row in np.asarray(bbs, dtype=np.int64).reshape(-1, 10)]
    for row in (r for r in rows if r[0] == 0):  # ignore regions: posters on walls, behind people
        _poster(d, rng, *row[1:5])
    for row in sorted((r for r in rows if r[0] != 0), key=lambda r: r[4]):  # far (small) first
        c, x, y, w, h = row[:5]
        if c in (1, 2):
            if c == 2:
                demo._bicycle(d, rng, x - w * 0.3, y + h * 0.55, w * 1.6, h * 0.45)
            demo._person(d, rng, x + w / 2, y, h)
            _occlude(d, rng, row[1:5], row[6:10], W, H)
        elif c == 5:
            _group(d, rng, x, y, w, h)
        else:  # sitting or other person: one figure standing in the box
            fh = min(h, w / 0.41)
            demo._person(d, rng, x + w / 2, y + h - fh, fh)

    arr = np.asarray(img, dtype=np.int16)
    cells = rng.integers(-NOISE, NOISE + 1, (-(-H // NOISE_CELL), -(-W // NOISE_CELL), 3), dtype=np.int16)
    arr += cells.repeat(NOISE_CELL, 0).repeat(NOISE_CELL, 1)[:H, :W]
    return Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8))


def _poster(d, rng, x, y, w, h):
    """An ignore region as the demo draws one: a poster with a printed figure."""
    d.rectangle([x, y, x + w, y + h], fill=demo._color(rng, 180, 255))
    fh = min(h * 0.7, w * 1.6)
    demo._person(d, rng, x + w * 0.5, y + (h - fh) / 2, fh)


def _group(d, rng, x, y, w, h):
    """Several overlapping figures filling a group box, feet on its bottom edge."""
    n = int(np.clip(round(w / (0.3 * max(h, 1))), 2, 6))
    for _ in range(n):
        fh = h * rng.uniform(0.8, 1.0)
        half = min(0.22 * fh, w / 2)
        demo._person(d, rng, rng.uniform(x + half, x + w - half), y + h - fh, fh)


def _occlude(d, rng, full, visible, W, H):
    """Hide the part of the full-body box (clipped to the frame) outside the visible box: a car
    across the bottom, a board or pillar beside or above. Strips thinner than the figure's own
    margins (0.15 of the width, 0.08 of the height) are left alone."""
    x, y, w, h = full
    vx, vy, vw, vh = visible
    fx1, fy1, fx2, fy2 = max(x, 0), max(y, 0), min(x + w, W), min(y + h, H)
    tol_h, tol_v = max(2, 0.15 * w), max(2, 0.08 * h)
    if fy2 - (vy + vh) > tol_v:  # the legs: a parked car (or its bonnet) in front
        top = vy + vh
        left, right = fx1 - w * rng.uniform(0.15, 0.6), fx2 + w * rng.uniform(0.15, 0.6)
        depth = fy2 + 4 - top
        # the car's rounded corners must lie outside the box
        left, right = min(left, fx1 - 0.25 * depth), max(right, fx2 + 0.25 * depth)
        demo._car(d, rng, left, top, right - left, depth)
    if vy - fy1 > tol_v:  # the head: a sign or an awning
        _board(d, rng, fx1 - w * rng.uniform(0.1, 0.5), fy1 - h * rng.uniform(0, 0.3),
               fx2 + w * rng.uniform(0.1, 0.5), vy)
    if vx - fx1 > tol_h:  # the left side: a pillar, a kiosk, a parked van
        _board(d, rng, fx1 - w * rng.uniform(0, 0.8), fy1 - h * rng.uniform(0, 0.2), vx, fy2 + 2)
    if fx2 - (vx + vw) > tol_h:  # the right side
        _board(d, rng, vx + vw, fy1 - h * rng.uniform(0, 0.2), fx2 + w * rng.uniform(0, 0.8), fy2 + 2)


def _board(d, rng, x1, y1, x2, y2):
    """A solid occluder with an edge: pillar, board, van side."""
    d.rectangle([x1, y1, x2, y2], fill=(25, 25, 25))
    o = max((x2 - x1) / 30, 1)
    d.rectangle([x1 + o, y1 + o, x2 - o, y2 - o], fill=demo._color(rng, 30, 230))


def main(out: Path, mat_dir: Path, seed: int, n_train: int, n_val: int, force: bool,
         how: str = "pass --annotations DIR") -> None:
    out = Path(out)
    if out.exists() and not force:
        info("dataset", f"{paths.rel(out)} already exists; --force generates it anew "
                        f"and moves the old one aside")
        return
    inputs = _inputs(out, mat_dir, n_train, n_val, how)  # every check before anything is moved
    if out.exists():
        aside = files.move_aside(out)
        info("dataset", f"moved the old proxy download aside to {paths.rel(aside)}")
    params = _write(out, seed, n_train, n_val, *inputs)
    info("dataset", f"generated the CityPersons-scale proxy in {paths.rel(out)}/ "
                    f"({params['n_train']} train + {params['n_val']} val images of {SIZE[0]}x{SIZE[1]}, "
                    f"seed {seed}, from the annotations in {paths.rel(mat_dir)}/)")
