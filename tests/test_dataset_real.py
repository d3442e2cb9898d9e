"""The dataset stage on the real CityPersons annotation files (placeholder PNGs of the real size)."""
import json
import os
import subprocess
import sys
from collections import Counter

import pytest

from tests.helpers import ROOT, SHARED_CITYPERSONS, make_real_root, needs_real_citypersons
from services.common import config
from services.dataset import citypersons

pytestmark = needs_real_citypersons
CFG = ROOT / "configs" / "citypersons.yaml"


@pytest.fixture(scope="module")
def real_root(tmp_path_factory, placeholder_png):
    return make_real_root(tmp_path_factory.mktemp("real"), placeholder_png)


@pytest.fixture(scope="module")
def no_selection(real_root):
    """The common train/val practice (selection_fraction=0): the bar counts are defined on it."""
    cfg = config.load(CFG, ["dataset.selection_fraction=0"])
    return citypersons.convert(cfg, root=real_root)


def test_default_policy_gives_the_exact_counts(no_selection):
    c = no_selection["counts"]
    assert (c["train"]["images"], c["train"]["boxes"], c["train"]["clipped"], c["train"]["background"],
            c["train"]["degenerate"]) == (2975, 16526, 256, 672, 0)
    assert (c["val"]["images"], c["val"]["boxes"], c["val"]["clipped"], c["val"]["background"],
            c["val"]["degenerate"]) == (500, 3157, 53, 102, 0)
    assert c["selection"]["images"] == 0


def test_labels_on_disk_match_the_counts(real_root, no_selection):
    out = real_root / "datasets" / "citypersons" / "yolo"
    for split, (n_images, n_boxes, n_empty) in {"train": (2975, 16526, 672), "val": (500, 3157, 102)}.items():
        labels = list((out / split / "labels").glob("*.txt"))
        assert len(labels) == n_images == len(list((out / split / "images").glob("*.png")))
        lines = [line for p in labels for line in p.read_text().splitlines()]
        assert len(lines) == n_boxes
        assert sum(p.stat().st_size == 0 for p in labels) == n_empty
        for line in lines:
            cls, *xywh = line.split()
            assert cls == "0" and all(0.0 <= float(v) <= 1.0 for v in xywh)
    # the first pedestrian of the first val image: [947, 406, 17, 40] in a 2048x1024 frame
    first = (out / "val" / "labels" / "frankfurt_000000_000294_leftImg8bit.txt").read_text().splitlines()[0]
    assert first == f"0 {(947 + 17 / 2) / 2048:.6f} {(406 + 40 / 2) / 1024:.6f} {17 / 2048:.6f} {40 / 1024:.6f}"


def test_images_are_hard_linked_not_copied(real_root, no_selection):
    assert no_selection["bytes_copied"] == 0
    assert no_selection["images_placed"] == {"hardlink": 3475}
    out = real_root / "datasets" / "citypersons" / "yolo" / "val" / "images"
    raw = real_root / "datasets" / "citypersons" / "raw" / "leftImg8bit" / "val" / "frankfurt"
    name = "frankfurt_000000_000294_leftImg8bit.png"
    assert os.stat(out / name).st_ino == os.stat(raw / name).st_ino


def test_rebuilt_val_gt_equals_the_official_file(real_root, no_selection):
    ours = json.loads((real_root / "datasets/citypersons/yolo/val_gt.json").read_text())
    official = json.loads((SHARED_CITYPERSONS / "val_gt.json").read_text())
    assert ours["images"] == official["images"]
    assert ours["categories"] == official["categories"]
    assert len(ours["annotations"]) == len(official["annotations"]) == 5795
    for a, b in zip(ours["annotations"], official["annotations"]):
        assert a == b, f"annotation {b['id']} differs"


def test_val_coco_is_what_pycocotools_expects(real_root, no_selection):
    from pycocotools.coco import COCO
    coco = COCO(str(real_root / "datasets/citypersons/yolo/val_coco.json"))
    assert len(coco.getImgIds()) == 500
    anns = coco.loadAnns(coco.getAnnIds())
    assert Counter(a["iscrowd"] for a in anns) == {0: 3157, 1: 5795 - 3157}
    assert all(a["area"] == a["bbox"][2] * a["bbox"][3] for a in anns)
    assert coco.loadImgs(1)[0]["file_name"] == "frankfurt_000000_000294_leftImg8bit.png"


def test_manifest_records_checksums_policy_and_provenance(real_root, no_selection):
    m = json.loads((real_root / "datasets/citypersons/yolo/manifest.json").read_text())
    assert m["fingerprint"]["sha256"] == {
        "anno_train.mat": "1e9675594e2d30772b40c046a9e3e9b24604d43c20dd93121f35d864e63bdd06",
        "anno_val.mat": "e234f73b47d7e9c0dfa23a91a2bd8bd222b68a5f5fe7061e8bbfefa3435aac96"}
    assert m["policy"]["positives"] == ["pedestrian"]
    assert "rider" in m["policy"]["not_positives"] and "ignore" in m["policy"]["not_positives"]
    assert m["config"]["dataset"]["selection_fraction"] == 0.0
    assert m["versions"]["scipy"] and m["git"]["commit"] and m["wall_s"] > 0
    assert m["counts"]["train"]["annotations_by_class"]["pedestrian"] == 16526


def test_selection_split_holds_out_whole_sequences(tmp_path, placeholder_png):
    root = make_real_root(tmp_path, placeholder_png)
    m = citypersons.convert(config.load(CFG), root=root)  # default: 10 % selection
    c = m["counts"]
    assert c["train"]["images"] + c["selection"]["images"] == 2975
    assert c["train"]["boxes"] + c["selection"]["boxes"] == 16526
    assert c["train"]["clipped"] + c["selection"]["clipped"] == 256
    assert abs(c["selection"]["images"] - 0.1 * 2975) <= 1  # whole sequences, yet on target
    out = root / "datasets/citypersons/yolo"
    seq = lambda p: "_".join(p.name.split("_")[:2])
    train_seqs = {seq(p) for p in (out / "train/images").iterdir()}
    selection_seqs = {seq(p) for p in (out / "selection/images").iterdir()}
    assert train_seqs and selection_seqs and not train_seqs & selection_seqs
    yaml_text = (out / "citypersons.yaml").read_text()
    assert "val: selection/images" in yaml_text and "test: val/images" in yaml_text

    # calibration list: 100 train images, relative to the project root, the same on a rebuild
    calib = (out / "calib.txt").read_text().splitlines()
    assert len(calib) == 100 and all((root / p).is_file() and "/train/images/" in p for p in calib)
    again = citypersons.convert(config.load(CFG), root=root, force=True)
    assert (out / "calib.txt").read_text().splitlines() == calib
    assert again["counts"] == m["counts"]
    # a forced rebuild from the same inputs replaces the output: no copy of identical output is kept
    assert again["moved_aside"] is None and not [p for p in out.parent.iterdir() if ".old-" in p.name]


def test_benchmark_converts_every_image_and_copies_none():
    """benchmarks/dataset_convert.py in its --check mode: it still runs and judges its outputs (no
    image bytes copied, all 3475 placeholders converted); its 5 s time bar is the benchmark's own
    business, so a busy machine cannot fail this test."""
    proc = subprocess.run([sys.executable, "benchmarks/dataset_convert.py", "--check", "--repeat", "1"], cwd=ROOT,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "bytes of image data copied: 0  bar 0: ok" in proc.stdout
    assert "images converted: 3475 of 3475 (" in proc.stdout
    assert "val 500 images 3157 boxes" in proc.stdout


def test_resolution_table_counts_the_official_reasonable_boxes(tmp_path):
    """benchmarks/resolution.py: the share of small ground truths per input size, from the real .mat."""
    out = tmp_path / "resolution.json"
    proc = subprocess.run([sys.executable, "benchmarks/resolution.py", "--annotations", str(SHARED_CITYPERSONS),
                           "--json", str(out)], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    rows = json.loads(out.read_text())["val"]
    assert [r["Reasonable"]["boxes"] for r in rows] == [1579] * 4  # the official val_gt.json's count
    below = [r["Reasonable"]["below_32px"] for r in rows]  # 640², 512x1024, 640x1280, 1024x2048
    assert below == sorted(below, reverse=True) and below[0] > 0.4 and below[-1] == 0.0
    assert rows[0]["Reasonable"]["below_16px"] > 0 and rows[2]["Reasonable"]["below_16px"] == 0
    assert "estimate" in proc.stdout
