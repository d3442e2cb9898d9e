"""The embedded demo: a deterministic mini CityPersons download, generated from a seed.

`python -m services.dataset demo` writes datasets/demo/raw/ in the exact raw layout of the real run
(leftImg8bit/{train,val}/<city>/<city>_<seq>_<frame>_leftImg8bit.png plus anno_train.mat and
anno_val.mat with the real struct, written with scipy), so `make demo` runs the same converter as
`make train`. The pictures are street-like scenes a from-scratch YOLO11n learns on a laptop CPU in
minutes: person figures (head, torso, arms, legs) of varied size, build and clothing, some partly
hidden behind cars or cut by the frame, among distractors that share their colours and edges
(poles, bollards, trees, cars, windows), plus a few riders and ignore regions (posters) so the
label policy has something to decide.
"""
import json
import os
import shutil
from pathlib import Path

import numpy as np
import scipy.io
from PIL import Image, ImageDraw
from tqdm import tqdm

from services.common import files, paths
from services.common.log import info

GENERATOR_VERSION = 1
CITIES = {"train": ["aachen", "bochum", "bremen", "hamburg"], "val": ["frankfurt", "lindau", "munster"]}
FRAMES_PER_SEQUENCE = 5


def generate(out: Path, seed: int = 0, n_train: int = 240, n_val: int = 60, size=(512, 256)) -> dict:
    """Write the raw demo download atomically into `out` (a folder that must not exist yet)."""
    out = Path(out)
    params = {"generator_version": GENERATOR_VERSION, "seed": seed, "n_train": n_train, "n_val": n_val,
              "size": list(size)}
    with files.build_dir(out) as build:
        rng = np.random.default_rng(seed)
        for split, n in (("train", n_train), ("val", n_val)):
            records = []
            for i in tqdm(range(n), desc=f"demo {split}", unit="img", mininterval=0.5, leave=False):
                city = CITIES[split][i % len(CITIES[split])]
                seq, frame = i // (len(CITIES[split]) * FRAMES_PER_SEQUENCE), (i * 19) % 1000
                name = f"{city}_{seq:06d}_{frame:06d}_leftImg8bit.png"
                image, bbs = scene(rng, size)
                folder = build.path / "leftImg8bit" / split / city
                folder.mkdir(parents=True, exist_ok=True)
                image.save(folder / name, optimize=False)
                records.append((city, name, bbs))
            write_mat(build.path / f"anno_{split}.mat", split, sorted(records, key=lambda r: r[1]))
        (build.path / "generator.json").write_text(json.dumps(params, indent=2) + "\n")
    return params


def write_mat(path: Path, split: str, records) -> None:
    """anno_<split>.mat with the struct the CityPersons repository ships: a (1, N) cell of 1x1
    structs with cityname, im_name and bbs. Like the real files, bbs uses the smallest dtype that
    holds its values (uint8, uint16, or int16 for boxes that start left of or above the frame), so
    the converter's cast-before-arithmetic is exercised."""
    cell = np.empty((1, len(records)), dtype=object)
    for i, (city, name, bbs) in enumerate(records):
        s = np.empty((1, 1), dtype=[("cityname", "O"), ("im_name", "O"), ("bbs", "O")])
        arr = np.asarray(bbs, dtype=np.int64).reshape(-1, 10)
        if arr.size == 0 or (arr.min() >= 0 and arr.max() < 256):
            dtype = np.uint8
        else:
            dtype = np.int16 if arr.min() < 0 else np.uint16
        s[0, 0] = (np.array([city]), np.array([name]), arr.astype(dtype))
        cell[0, i] = s
    scipy.io.savemat(path, {f"anno_{split}_aligned": cell}, do_compression=True)
    # The 116-byte text header carries the time of writing; make it fixed so the same seed gives
    # the same bytes (and the same checksum in the dataset manifest).
    with open(path, "r+b") as f:
        f.write(b"MATLAB 5.0 MAT-file, written by services.dataset.demo".ljust(116))


# ---------------------------------------------------------------------------------------- drawing
def _color(rng, lo=0, hi=255):
    return tuple(int(v) for v in rng.integers(lo, hi, 3))


def scene(rng, size):
    """One street picture and its bbs rows [class, x, y, w, h, id, vx, vy, vw, vh]."""
    W, H = size
    horizon = int(H * rng.uniform(0.35, 0.55))
    img = Image.new("RGB", size, _color(rng, 120, 230))
    d = ImageDraw.Draw(img)
    d.rectangle([0, horizon, W, H], fill=_color(rng, 40, 150))  # road / pavement
    for _ in range(rng.integers(2, 7)):  # buildings with windows: edges and colour everywhere
        bx, bw = int(rng.integers(-20, W)), int(rng.integers(40, 160))
        top = int(rng.integers(0, horizon - 10))
        d.rectangle([bx, top, bx + bw, horizon], fill=_color(rng, 60, 220))
        wc = _color(rng, 0, 255)
        for wy in range(top + 6, horizon - 10, 18):
            for wx in range(bx + 6, bx + bw - 8, 16):
                d.rectangle([wx, wy, wx + 7, wy + 9], fill=wc)

    rows, ident = [], 1
    ignore_posters = rng.random() < 0.12
    if ignore_posters:  # a poster with a printed figure: the official data marks these as ignore
        pw, ph = int(rng.integers(30, 60)), int(rng.integers(40, 80))
        px, py = int(rng.integers(0, W - pw)), int(rng.integers(0, max(1, horizon - ph)))
        d.rectangle([px, py, px + pw, py + ph], fill=_color(rng, 180, 255))
        _person(d, rng, px + pw * 0.3, py + ph * 0.15, ph * 0.7)
        rows.append([0, px, py, pw, ph, 0, px, py, pw, ph])

    for _ in range(rng.integers(0, 5)):  # distractors behind people
        _distractor(d, rng, W, H, horizon)

    n_people = int(rng.choice([0, 1, 2, 3, 4, 5, 6], p=[0.08, 0.17, 0.22, 0.2, 0.15, 0.1, 0.08]))
    for _ in range(n_people):
        h = float(np.exp(rng.uniform(np.log(30), np.log(170))))
        w = h * rng.uniform(0.36, 0.48)
        feet = horizon + (H - horizon) * rng.uniform(0.15, 1.0) + h * 0.05
        y = min(feet, H + h * 0.15) - h  # some feet run off the bottom edge
        x = rng.uniform(-w * 0.35, W - w * 0.65)  # some bodies are cut by the left/right edges
        rider = rng.random() < 0.06
        if rider:
            _bicycle(d, rng, x - w * 0.3, y + h * 0.55, w * 1.6, h * 0.45)
        _person(d, rng, x + w * 0.5, y, h)
        vx, vy, vw, vh = x, y, w, h
        if not rider and rng.random() < 0.25:  # a car or a bench hides the legs
            cover = y + h * rng.uniform(0.45, 0.8)
            _car(d, rng, x - w * rng.uniform(0.3, 1.0), cover, w * rng.uniform(1.8, 3.0), y + h + 4 - cover)
            vh = cover - y
        ib = [int(round(v)) for v in (x, y, w, h)]
        vb = [int(round(v)) for v in _clip_box(vx, vy, vw, vh, W, H)]
        rows.append([2 if rider else 1, *ib, ident, *vb])
        ident += 1

    if rng.random() < 0.5:  # foreground clutter last, so it can overlap anyone
        _distractor(d, rng, W, H, horizon)
    arr = np.asarray(img, dtype=np.int16)
    arr += rng.integers(-12, 13, arr.shape, dtype=np.int16)  # sensor noise, so edges are not perfect
    img = Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8))
    return img, rows


def _clip_box(x, y, w, h, W, H):
    x1, y1, x2, y2 = max(x, 0), max(y, 0), min(x + w, W), min(y + h, H)
    return x1, y1, max(x2 - x1, 0), max(y2 - y1, 0)


def _person(d, rng, cx, top, h):
    """A standing figure whose full-body box is (cx - 0.22h .. cx + 0.22h, top .. top + h)."""
    skin, shirt, pants = _color(rng, 60, 240), _color(rng), _color(rng, 0, 160)
    head = h * 0.13
    d.ellipse([cx - head * 0.45, top, cx + head * 0.45, top + head], fill=skin)
    torso_w = h * rng.uniform(0.2, 0.28)
    sh, hip = top + head * 1.05, top + h * 0.52
    d.rectangle([cx - torso_w / 2, sh, cx + torso_w / 2, hip], fill=shirt)
    arm = max(h * 0.05, 1)
    swing = h * rng.uniform(-0.06, 0.06)
    d.line([cx - torso_w / 2, sh + arm, cx - torso_w / 2 - abs(swing) - arm, hip], fill=shirt, width=int(arm))
    d.line([cx + torso_w / 2, sh + arm, cx + torso_w / 2 + abs(swing) + arm, hip], fill=shirt, width=int(arm))
    stride = h * rng.uniform(0.0, 0.14)
    leg = max(h * 0.07, 1)
    d.line([cx - leg / 2, hip, cx - leg / 2 - stride, top + h - 1], fill=pants, width=int(leg))
    d.line([cx + leg / 2, hip, cx + leg / 2 + stride, top + h - 1], fill=pants, width=int(leg))


def _car(d, rng, x, y, w, h):
    body = _color(rng)
    d.rounded_rectangle([x, y, x + w, y + h], radius=max(h * 0.2, 1), fill=body)
    r = h * 0.22
    for wx in (x + w * 0.2, x + w * 0.8):
        d.ellipse([wx - r, y + h - r, wx + r, y + h + r * 0.6], fill=(20, 20, 20))


def _bicycle(d, rng, x, y, w, h):
    c, r = _color(rng, 0, 120), h * 0.45
    for wx in (x + r, x + w - r):
        d.ellipse([wx - r, y + h - 2 * r, wx + r, y + h], outline=c, width=max(int(h * 0.06), 1))
    d.line([x + r, y + h - r, x + w - r, y + h - r], fill=c, width=max(int(h * 0.06), 1))


def _distractor(d, rng, W, H, horizon):
    kind = rng.choice(["pole", "bollard", "tree", "car", "sign"])
    x = float(rng.uniform(0, W))
    base = horizon + (H - horizon) * rng.uniform(0.1, 1.0)
    if kind == "pole":
        h = rng.uniform(60, 220)
        d.rectangle([x, base - h, x + rng.uniform(3, 9), base], fill=_color(rng, 0, 200))
    elif kind == "bollard":
        h = rng.uniform(15, 50)
        d.rectangle([x, base - h, x + h * rng.uniform(0.25, 0.5), base], fill=_color(rng))
    elif kind == "tree":
        h = rng.uniform(60, 180)
        d.rectangle([x - 4, base - h * 0.5, x + 4, base], fill=(90, 60, 30))
        d.ellipse([x - h * 0.3, base - h, x + h * 0.3, base - h * 0.35], fill=_color(rng, 0, 180))
    elif kind == "car":
        w = rng.uniform(60, 180)
        _car(d, rng, x - w / 2, base - w * 0.4, w, w * 0.4)
    else:
        d.rectangle([x, base - 70, x + 3, base], fill=(110, 110, 110))
        d.rectangle([x - 10, base - 80, x + 13, base - 62], fill=_color(rng))


def main(out: Path, seed: int, force: bool) -> None:
    out = Path(out)
    if out.exists():
        if not force:
            info("dataset", f"{paths.rel(out)} already exists; --force generates it anew "
                         f"and moves the old one aside")
            return
        aside = files.move_aside(out)
        info("dataset", f"moved the old demo download aside to {paths.rel(aside)}")
    params = generate(out, seed=seed)
    info("dataset", f"generated the demo download in {paths.rel(out)}/ "
                    f"({params['n_train']} train + {params['n_val']} val images, seed {seed})")
