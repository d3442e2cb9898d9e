"""The CityPersons-scale proxy: generated from the real annotation files, converted like the real data."""
import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
import scipy.io
from PIL import Image

from tests.helpers import ROOT, SHARED_CITYPERSONS, needs_real_citypersons, one_error, run_module
from services.dataset import citypersons, proxy

PROXY = str(ROOT / "configs" / "proxy.yaml")
N = 3  # train and val images: enough for every check, a few seconds to draw
SMALL = ["dataset.proxy_train_images=3", "dataset.proxy_val_images=3"]


def tree_digest(folder: Path) -> dict:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def real_records(split: str) -> dict:
    return {r["name"]: r for r in citypersons.read_mat(SHARED_CITYPERSONS / f"anno_{split}.mat", split)}


@pytest.fixture(scope="module")
def proxy_root(tmp_path_factory):
    """The dataset stage on configs/proxy.yaml, as `make dataset EXP=proxy` runs it, 3 + 3 images."""
    root = tmp_path_factory.mktemp("proxy")
    proc = run_module("dataset", ["--config", PROXY, *SMALL,
                                  f"dataset.proxy_annotations={SHARED_CITYPERSONS}"], root, timeout=300)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert "generated the CityPersons-scale proxy" in proc.stdout
    return root


@needs_real_citypersons
def test_raw_layout_names_and_rows_are_the_real_ones(proxy_root):
    raw = proxy_root / "datasets" / "proxy" / "raw"
    for split in ("train", "val"):
        real = real_records(split)
        cells = scipy.io.loadmat(raw / f"anno_{split}.mat")[f"anno_{split}_aligned"]
        assert cells.shape == (1, N) and cells.dtype == object
        real_dtypes = {str(c[0, 0]["im_name"][0]): c[0, 0]["bbs"].dtype
                       for c in scipy.io.loadmat(SHARED_CITYPERSONS / f"anno_{split}.mat")[f"anno_{split}_aligned"].ravel()}
        ours = citypersons.read_mat(raw / f"anno_{split}.mat", split)
        assert [r["name"] for r in ours] == sorted(r["name"] for r in ours)
        for cell, r in zip(cells.ravel(), ours):
            assert cell[0, 0].dtype.names == ("cityname", "im_name", "bbs")
            assert cell[0, 0]["bbs"].dtype == real_dtypes[r["name"]]  # the real files' dtype rule
            assert r["city"] == real[r["name"]]["city"]
            assert np.array_equal(r["bbs"], real[r["name"]]["bbs"])  # the real rows, unchanged
            png = raw / "leftImg8bit" / split / r["city"] / r["name"]
            assert citypersons.png_size(png) == (2048, 1024)
        assert any(len(r["bbs"]) for r in ours)
        assert len(list((raw / "leftImg8bit" / split).glob("*/*_leftImg8bit.png"))) == N
    made = json.loads((raw / "generator.json").read_text())
    assert made["seed"] == 0 and (made["n_train"], made["n_val"]) == (N, N) and made["size"] == [2048, 1024]
    assert made["source_sha256"] == {f"anno_{s}.mat": citypersons.MAT_FILES[s][1] for s in ("train", "val")}


@needs_real_citypersons
def test_yolo_labels_are_the_real_pedestrian_boxes(proxy_root):
    out = proxy_root / "datasets" / "proxy" / "yolo"
    for split, folders in (("train", ("train", "selection")), ("val", ("val",))):
        real = real_records(split)
        labels = {p.name: p for f in folders for p in (out / f / "labels").glob("*.txt")}
        assert len(labels) == N
        for name, path in labels.items():
            want = []
            for c, x, y, w, h in real[name.replace(".txt", ".png")]["bbs"][:, :5].tolist():
                if c == 1:  # the default policy: pedestrians only, clipped to the frame
                    x1, y1, x2, y2 = max(x, 0), max(y, 0), min(x + w, 2048), min(y + h, 1024)
                    want.append([0, (x1 + x2) / 2 / 2048, (y1 + y2) / 2 / 1024, (x2 - x1) / 2048, (y2 - y1) / 1024])
            got = [[float(v) for v in line.split()] for line in path.read_text().splitlines()]
            assert np.allclose(got, want, atol=1e-6) if want else got == [], name
    assert sum(len(p.read_text().splitlines()) for p in out.glob("*/labels/*.txt")) > 0


@needs_real_citypersons
def test_val_gt_equals_the_official_ground_truth_of_those_images(proxy_root):
    ours = json.loads((proxy_root / "datasets/proxy/yolo/val_gt.json").read_text())
    official = json.loads((SHARED_CITYPERSONS / "val_gt.json").read_text())
    names = {i["id"]: i["im_name"] for i in ours["images"]}
    official_ids = {i["im_name"]: i["id"] for i in official["images"]}
    assert len(names) == N and ours["categories"] == official["categories"]
    for image in ours["images"]:
        twin = next(i for i in official["images"] if i["im_name"] == image["im_name"])
        assert {k: image[k] for k in ("im_name", "height", "width")} == {k: twin[k] for k in ("im_name", "height", "width")}
    strip = lambda a: {k: v for k, v in a.items() if k not in ("id", "image_id")}
    for image_id, name in names.items():
        mine = [strip(a) for a in ours["annotations"] if a["image_id"] == image_id]
        theirs = [strip(a) for a in official["annotations"] if a["image_id"] == official_ids[name]]
        assert mine == theirs, name
    assert ours["annotations"]


@needs_real_citypersons
def test_pedestrians_are_drawn_in_their_boxes(proxy_root):
    """The picture is the street plus figures: re-drawn without its boxes (the same stream, so the same
    street), the pixels inside a visible pedestrian box differ by far more than the sensor noise."""
    raw = proxy_root / "datasets" / "proxy" / "raw"
    order = {name: i for i, name in enumerate(real_records("train"))}
    checked = 0
    for r in citypersons.read_mat(raw / "anno_train.mat", "train"):
        image = np.asarray(Image.open(raw / "leftImg8bit" / "train" / r["city"] / r["name"]), dtype=np.int16)
        again = proxy.frame(proxy.image_rng(0, "train", order[r["name"]]), r["bbs"])
        assert np.array_equal(np.asarray(again), image)  # the stream is the one the file was drawn with
        street = np.asarray(proxy.frame(proxy.image_rng(0, "train", order[r["name"]]), r["bbs"][:0]), dtype=np.int16)
        changed = np.abs(image - street).max(axis=2) > 2 * proxy.NOISE + 8
        for c, x, y, w, h, _, vx, vy, vw, vh in r["bbs"].tolist():
            if c == 1 and vh >= 40 and vw * vh >= 0.8 * w * h and vx >= 0 and vx + vw <= 2048:
                box = changed[vy:vy + vh, vx:vx + vw]
                assert box.mean() > 0.25, (r["name"], [x, y, w, h], box.mean())
                checked += 1
        # the street itself is far from blank: buildings, windows and distractors have edges
        assert np.abs(np.diff(street, axis=1)).max(axis=2).mean() > 0.5
    assert checked > 0


@needs_real_citypersons
def test_same_seed_same_bytes_other_seed_other_frames(tmp_path):
    a = proxy.generate(tmp_path / "a", SHARED_CITYPERSONS, seed=5, n_train=2, n_val=2)
    proxy.generate(tmp_path / "b", SHARED_CITYPERSONS, seed=5, n_train=2, n_val=2)
    proxy.generate(tmp_path / "c", SHARED_CITYPERSONS, seed=6, n_train=2, n_val=2)
    da, db, dc = (tree_digest(tmp_path / x) for x in "abc")
    assert da == db and len(da) == 2 + 2 + 3  # PNGs, two .mat files, generator.json
    assert da != dc and a["seed"] == 5


@needs_real_citypersons
def test_ensure_regenerates_only_when_the_parameters_change(tmp_path):
    out = tmp_path / "datasets" / "proxy" / "raw"
    proxy.ensure(out, SHARED_CITYPERSONS, seed=0, n_train=1, n_val=1)
    stamp = (out / "generator.json").stat().st_mtime_ns
    proxy.ensure(out, SHARED_CITYPERSONS, seed=0, n_train=1, n_val=1)
    assert (out / "generator.json").stat().st_mtime_ns == stamp  # current: left as it is
    proxy.ensure(out, SHARED_CITYPERSONS, seed=0, n_train=2, n_val=1)
    assert json.loads((out / "generator.json").read_text())["n_train"] == 2
    aside = [p for p in out.parent.iterdir() if p.name.startswith("raw.old-")]
    assert len(aside) == 1 and (aside[0] / "generator.json").is_file()  # moved aside, not deleted
    # a larger proxy keeps the images a smaller one chose
    assert {p.name for p in aside[0].rglob("*.png")} < {p.name for p in out.rglob("*.png")}
    # a raw/ the generator did not make is never replaced
    (out / "generator.json").unlink()
    proxy.ensure(out, SHARED_CITYPERSONS, seed=1, n_train=1, n_val=1)
    assert not (out / "generator.json").exists()


@needs_real_citypersons
def test_cli_generates_and_keeps_an_existing_proxy(tmp_path):
    args = ["proxy", "--out", str(tmp_path / "p"), "--annotations", str(SHARED_CITYPERSONS), "--train", "1", "--val", "1"]
    proc = run_module("dataset", args, tmp_path, timeout=300)
    assert proc.returncode == 0 and "1 train + 1 val" in proc.stdout, proc.stderr[-2000:]
    assert len(list((tmp_path / "p").rglob("*.png"))) == 2
    proc = run_module("dataset", args, tmp_path, timeout=300)
    assert proc.returncode == 0 and "already exists; --force" in proc.stdout


@needs_real_citypersons
def test_more_images_than_the_annotations_list_is_one_line(tmp_path):
    line = one_error(run_module("dataset", ["--config", PROXY, "dataset.proxy_val_images=501",
                                            f"dataset.proxy_annotations={SHARED_CITYPERSONS}"], tmp_path))
    assert "501 val images" in line and "lists 500" in line
    assert not (tmp_path / "datasets").exists()


def test_missing_annotation_files_are_one_line_naming_them_and_the_fix(tmp_path):
    line = one_error(run_module("dataset", ["--config", PROXY], tmp_path))
    assert "datasets/citypersons/raw/anno_train.mat" in line and "datasets/citypersons/raw/anno_val.mat" in line
    assert "make dataset EXP=citypersons" in line and "dataset.proxy_annotations=DIR" in line
    assert not (tmp_path / "datasets").exists(), "nothing may be generated without the annotations"
    line = one_error(run_module("dataset", ["proxy", "--annotations", str(tmp_path / "nowhere")], tmp_path))
    assert "nowhere/anno_train.mat" in line and "--annotations DIR" in line


def test_demo_and_proxy_together_is_one_line(tmp_path):
    line = one_error(run_module("dataset", ["--config", PROXY, "dataset.generate_demo=true"], tmp_path))
    assert "generate_demo and dataset.generate_proxy" in line


def test_proxy_experiment_is_the_real_run_on_the_proxy():
    from services.common import config
    cfg, real = config.load(PROXY), config.load(ROOT / "configs" / "citypersons.yaml")
    d = cfg["dataset"]
    assert d["name"] == "proxy" and d["generate_proxy"] is True and d["generate_demo"] is False
    assert d["proxy_annotations"] == "datasets/citypersons/raw"
    assert cfg["train"] == real["train"] and cfg["train"]["imgsz"] == 1280 and cfg["train"]["device"] == "0"
    assert cfg["export"]["imgsz"] == real["export"]["imgsz"] == [640, 1280]  # docs/thesis/config.md: "Why imgsz 1280"
    assert cfg["evaluate"]["sets"] == ["val"]
    assert config.load(PROXY, ["dataset.proxy_train_images=2975"])["dataset"]["proxy_train_images"] == 2975
