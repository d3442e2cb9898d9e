"""The embedded demo download: deterministic, in the real raw layout, and converted like the real one."""
import hashlib
import json
from collections import Counter
from pathlib import Path

import numpy as np
import scipy.io

from tests.helpers import ROOT, demo_root
from services.common import config
from services.dataset import citypersons, demo

DEMO = ROOT / "configs" / "demo.yaml"


def tree_digest(folder: Path) -> dict:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def test_same_seed_same_bytes_other_seed_other_pictures(tmp_path):
    a = demo.generate(tmp_path / "a", seed=3, n_train=10, n_val=4)
    demo.generate(tmp_path / "b", seed=3, n_train=10, n_val=4)
    demo.generate(tmp_path / "c", seed=4, n_train=10, n_val=4)
    da, db, dc = (tree_digest(tmp_path / x) for x in "abc")
    assert da == db and len(da) == 10 + 4 + 3  # PNGs, two .mat files, generator.json
    assert da.keys() == dc.keys() and da != dc
    assert a["seed"] == 3


def test_layout_and_mat_struct_are_the_real_ones(demo_raw):
    pngs = sorted(demo_raw.glob("leftImg8bit/*/*/*_leftImg8bit.png"))
    assert len(pngs) == 300
    assert {p.parent.parent.name for p in pngs} == {"train", "val"}
    assert {p.parent.name for p in pngs if p.parent.parent.name == "val"} == {"frankfurt", "lindau", "munster"}
    dtypes = Counter()
    rows = []
    for split in ("train", "val"):
        mat = scipy.io.loadmat(demo_raw / f"anno_{split}.mat")
        cells = mat[f"anno_{split}_aligned"]
        assert cells.shape == (1, 240 if split == "train" else 60) and cells.dtype == object
        for cell in cells.ravel():
            s = cell[0, 0]
            assert s.dtype.names == ("cityname", "im_name", "bbs")
            name = str(s["im_name"][0])
            assert (demo_raw / "leftImg8bit" / split / str(s["cityname"][0]) / name).is_file()
            assert s["bbs"].ndim == 2 and s["bbs"].shape[1] == 10
            dtypes[str(s["bbs"].dtype)] += 1
            rows += s["bbs"].astype(np.int64).tolist()
    # as in the real files, the dtype varies per image (the converter must cast before adding)
    assert {"uint8", "uint16"} <= set(dtypes) or {"uint8", "int16"} <= set(dtypes)
    classes = Counter(r[0] for r in rows)
    assert classes[1] > 500 and 0 < classes[2] < 0.1 * classes[1] and 0 < classes[0] < 0.1 * classes[1]
    # some full-body boxes run off the frame, some pedestrians are occluded (visible box smaller)
    assert any(r[1] < 0 or r[1] + r[3] > 512 or r[2] + r[4] > 256 for r in rows if r[0] == 1)
    assert sum(r[9] < r[4] for r in rows if r[0] == 1) > 50


def test_demo_converts_with_the_default_policy(tmp_path, demo_raw):
    root = demo_root(tmp_path, demo_raw)
    m = citypersons.convert(config.load(DEMO), root=root)
    out = root / "datasets" / "demo" / "yolo"
    c = m["counts"]
    assert c["train"]["images"] + c["selection"]["images"] == 240 and c["val"]["images"] == 60
    assert c["train"]["clipped"] > 0 and c["train"]["background"] > 0
    # riders and ignore regions are in the annotations but not in the labels
    by_class = Counter()
    for s in c.values():
        by_class.update(s["annotations_by_class"])
    assert by_class["rider"] > 0 and by_class["ignore"] > 0
    labelled = sum(len(p.read_text().splitlines()) for p in out.glob("*/labels/*.txt"))
    assert labelled == sum(s["boxes"] for s in c.values()) == by_class["pedestrian"] - sum(
        s["degenerate"] for s in c.values())
    assert (out / "demo.yaml").is_file() and len((out / "calib.txt").read_text().splitlines()) == 100
    gt = json.loads((out / "val_gt.json").read_text())
    assert len(gt["images"]) == 60 and {i["width"] for i in gt["images"]} == {512}

    # a broader policy: riders become persons too, and the manifest says so
    wider = citypersons.convert(config.load(DEMO, ["dataset.positives=[pedestrian, rider]"]), root=root)
    boxes = lambda m: sum(s["boxes"] for s in m["counts"].values())
    assert boxes(wider) == boxes(m) + by_class["rider"]
    assert wider["policy"]["positives"] == ["pedestrian", "rider"] and wider["moved_aside"]


def test_background_can_be_dropped_from_train_only(tmp_path, demo_raw):
    root = demo_root(tmp_path, demo_raw)
    keep = citypersons.convert(config.load(DEMO), root=root)["counts"]
    drop = citypersons.convert(config.load(DEMO, ["dataset.keep_background=false"]), root=root)["counts"]
    assert drop["train"]["background"] == 0
    assert drop["train"]["background_dropped"] == keep["train"]["background"] > 0
    assert drop["train"]["images"] == keep["train"]["images"] - keep["train"]["background"]
    assert drop["val"] == keep["val"] and drop["selection"] == keep["selection"]


def test_symlink_and_copy_are_there_when_hard_links_are_not_wanted(tmp_path, demo_raw):
    root = demo_root(tmp_path, demo_raw)
    out = root / "datasets" / "demo" / "yolo" / "val" / "images"
    linked = citypersons.convert(config.load(DEMO, ["dataset.link=symlink"]), root=root)
    assert linked["images_placed"] == {"symlink": 300} and linked["bytes_copied"] == 0
    first = sorted(out.iterdir())[0]
    # relative, so the tree survives being mounted elsewhere (containers mount it at /workspace)
    assert first.is_symlink() and not Path(first.readlink()).is_absolute() and first.stat().st_size > 0
    copied = citypersons.convert(config.load(DEMO, ["dataset.link=copy"]), root=root)
    raw_bytes = sum(p.stat().st_size for p in demo_raw.glob("leftImg8bit/*/*/*.png"))
    assert copied["images_placed"] == {"copy": 300} and copied["bytes_copied"] == raw_bytes
    assert not sorted(out.iterdir())[0].is_symlink()


def test_demo_download_is_regenerated_when_the_seed_changes(tmp_path, demo_raw):
    root = demo_root(tmp_path, demo_raw)
    from tests.helpers import run_module
    proc = run_module("dataset", ["--config", str(DEMO)], root)
    assert proc.returncode == 0 and "generated" not in proc.stdout  # seed 0: the copy is current
    proc = run_module("dataset", ["--config", str(DEMO), "dataset.seed=1", "dataset.calib_images=1"], root)
    assert proc.returncode == 0 and "from another generator version or seed" in proc.stdout
    assert json.loads((root / "datasets/demo/raw/generator.json").read_text())["seed"] == 1
    assert [p.name.startswith("raw.old-") for p in (root / "datasets/demo").iterdir()].count(True) == 1
