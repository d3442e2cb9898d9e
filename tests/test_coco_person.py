"""The COCO val2017 person set: built from a generated instances file with several categories,
crowds and person-less images, counted independently here; scored by the evaluation stage."""
import json
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
from PIL import Image

from tests.helpers import ROOT, demo_root, one_error, refusal, run_module, stage_env
from services.common import config
from services.dataset import coco

DEMO = str(ROOT / "configs" / "demo.yaml")
CATEGORIES = [{"supercategory": "vehicle", "id": 2, "name": "bicycle"},
              {"supercategory": "person", "id": 1, "name": "person"},
              {"supercategory": "vehicle", "id": 3, "name": "car"}]
# image id -> its annotations: (category id, [x, y, w, h], iscrowd). Images are 64x48.
SCENES = {
    1: [(1, [10, 5, 20, 30], 0), (1, [40, 10, 15, 30], 0)],
    2: [(1, [50, 20, 30, 40], 0)],                            # runs off the right and bottom edges
    3: [(1, [5, 5, 10, 20], 0), (1, [20, 0, 40, 48], 1), (3, [0, 30, 30, 18], 0)],   # a crowd and a car
    4: [(1, [0, 0, 64, 48], 1)],                              # only a crowd: still contains persons
    5: [(3, [10, 10, 30, 20], 0)],                            # a car, no person
    6: [(2, [5, 20, 20, 20], 0), (3, [30, 20, 30, 20], 0)],   # a bicycle and a car
    7: [],                                                    # nothing at all
    8: [(1, [5, 5, 0.4, 10], 0), (1, [30, 8, 12, 30], 0)],    # a sliver narrower than a pixel
    9: [(1, [12, 4, 14, 40], 0), (2, [10, 30, 20, 18], 0)],
    10: [(1, [33, 3, 20, 40], 0)],
}
W, H = 64, 48


def instances() -> dict:
    images = [{"id": i, "file_name": f"{i:012d}.jpg", "width": W, "height": H, "license": 1}
              for i in SCENES]
    anns = []
    for image_id, objects in SCENES.items():
        for cat, box, crowd in objects:
            anns.append({"id": 100 + len(anns), "image_id": image_id, "category_id": cat, "bbox": box,
                         "area": box[2] * box[3], "iscrowd": crowd,
                         "segmentation": {"counts": [0, 1], "size": [H, W]} if crowd else [[0, 0, 1, 1, 2, 2]]})
    return {"info": {"description": "generated"}, "licenses": [{"id": 1, "name": "test"}],
            "images": images, "annotations": anns, "categories": CATEGORIES}


def make_coco_raw(raw: Path, data: dict | None = None) -> dict:
    """datasets/coco/raw/ as the official archives extract: annotations/instances_val2017.json and
    val2017/*.jpg (small real JPEGs)."""
    data = data or instances()
    (raw / "annotations").mkdir(parents=True)
    (raw / "annotations" / "instances_val2017.json").write_text(json.dumps(data))
    (raw / "val2017").mkdir()
    for i, im in enumerate(data["images"]):
        Image.new("RGB", (im["width"], im["height"]), (40 * i % 255, 90, 160)).save(raw / "val2017" / im["file_name"])
    return data


def zip_coco(raw: Path, out: Path) -> tuple[Path, Path]:
    """The two official archives, with their layout (and a file we do not need in each)."""
    out.mkdir(parents=True, exist_ok=True)
    images, annotations = out / "val2017.zip", out / "annotations_trainval2017.zip"
    with zipfile.ZipFile(images, "w") as z:
        for p in sorted((raw / "val2017").iterdir()):
            z.write(p, f"val2017/{p.name}")
    with zipfile.ZipFile(annotations, "w", compression=zipfile.ZIP_DEFLATED) as z:
        z.write(raw / "annotations" / "instances_val2017.json", "annotations/instances_val2017.json")
        z.writestr("annotations/captions_val2017.json", "{}")
    return images, annotations


def expected_counts(data: dict, negatives: bool = False) -> dict:
    """The same counts, computed without the stage's code."""
    person = [c["id"] for c in data["categories"] if c["name"] == "person"][0]
    persons = [a for a in data["annotations"] if a["category_id"] == person]
    images = [im for im in data["images"] if negatives or any(a["image_id"] == im["id"] for a in persons)]
    labelled = [a for a in persons if not a["iscrowd"]
                and min(a["bbox"][0] + a["bbox"][2], W) - max(a["bbox"][0], 0) >= 1]
    return {"images": len(images), "person_annotations": len(persons),
            "crowd": sum(a["iscrowd"] for a in persons), "boxes": len(labelled),
            "negatives": sum(1 for im in images if not any(a["image_id"] == im["id"] for a in persons))}


def build(root: Path, *overrides):
    cfg = config.load(DEMO, ["evaluate.sets=[val, coco_person]", *overrides])
    return coco.build(cfg, root=root)


# ------------------------------------------------------------------------------ the set
def test_person_set_counts_match_an_independent_count(tmp_path):
    data = make_coco_raw(tmp_path / "datasets/coco/raw")
    m = build(tmp_path)
    want = expected_counts(data)
    assert want == {"images": 7, "person_annotations": 10, "crowd": 2, "boxes": 7, "negatives": 0}
    c = m["counts"]
    assert {k: c[k] for k in want} == want
    assert c["degenerate"] == 1 and c["clipped"] == 1 and c["missing_images"] == 0
    assert c["other_categories_dropped"] == 5 and c["listed_images"] == 10

    out = tmp_path / "datasets/coco/yolo"
    gt = json.loads((out / "person_val2017.json").read_text())
    assert gt["categories"] == [{"supercategory": "person", "id": 1, "name": "person"}]
    assert sorted(im["id"] for im in gt["images"]) == [1, 2, 3, 4, 8, 9, 10]
    assert len(gt["annotations"]) == 10 and {a["category_id"] for a in gt["annotations"]} == {1}
    assert sum(a["iscrowd"] for a in gt["annotations"]) == 2

    # the YOLO set: one hard-linked image and one label file per image, crowd boxes not labelled
    images = sorted(p.name for p in (out / "val/images").iterdir())
    assert images == [im["file_name"] for im in sorted(gt["images"], key=lambda im: im["id"])]
    assert (out / "val/images" / images[0]).stat().st_ino == (tmp_path / "datasets/coco/raw/val2017" / images[0]).stat().st_ino
    lines = {p.stem: p.read_text().splitlines() for p in (out / "val/labels").iterdir()}
    assert len(lines) == 7 and sum(len(v) for v in lines.values()) == 7
    assert lines["000000000004"] == [] and len(lines["000000000003"]) == 1
    cls, cx, cy, w, h = lines["000000000002"][0].split()  # clipped to the 64x48 frame: x 50..64, y 20..48
    assert cls == "0" and float(cx) == pytest.approx(57 / 64) and float(h) == pytest.approx(28 / 48)
    assert "val: val/images" in (out / "person_val2017.yaml").read_text()
    assert m["policy"]["negatives"] is False and m["policy"]["category"]["yolo_class"] == 0


def test_pycocotools_scores_the_set_and_ignores_crowds(tmp_path):
    from services.evaluate import scoring
    make_coco_raw(tmp_path / "datasets/coco/raw")
    build(tmp_path)
    gt_file = tmp_path / "datasets/coco/yolo/person_val2017.json"
    gt = json.loads(gt_file.read_text())
    perfect = [{"image_id": a["image_id"], "category_id": 1, "bbox": a["bbox"], "score": 0.9}
               for a in gt["annotations"] if not a["iscrowd"]]
    assert scoring.coco_ap(gt_file, perfect, library="pycocotools")["AP50"] == 1.0
    # a detection on a crowd matches the crowd and is ignored, not counted as a false positive
    on_crowd = [{"image_id": 4, "category_id": 1, "bbox": [2, 2, 60, 44], "score": 0.95}]
    assert scoring.coco_ap(gt_file, perfect + on_crowd, library="pycocotools")["AP50"] == 1.0
    elsewhere = [{"image_id": 1, "category_id": 1, "bbox": [0, 40, 8, 8], "score": 0.95}]
    assert scoring.coco_ap(gt_file, perfect + elsewhere, library="pycocotools")["AP50"] < 1.0


def test_negatives_are_an_option_stated_in_the_manifest(tmp_path):
    data = make_coco_raw(tmp_path / "datasets/coco/raw")
    m = build(tmp_path, "dataset.coco_negatives=true")
    want = expected_counts(data, negatives=True)
    assert want["images"] == 10 and want["negatives"] == 3
    assert {k: m["counts"][k] for k in want} == want
    assert m["policy"]["negatives"] is True and "included" in m["policy"]["negatives_means"]
    assert len(json.loads((tmp_path / "datasets/coco/yolo/person_val2017.json").read_text())["images"]) == 10


def test_the_config_names_the_set_and_checks_the_new_keys():
    from services.common.log import UserError
    assert config.load(ROOT / "configs" / "citypersons.yaml")["evaluate"]["sets"] == ["val", "coco_person"]
    demo = config.load(DEMO)
    assert demo["evaluate"]["sets"] == ["val"]  # the demo prepares and evaluates only its own data
    assert demo["dataset"]["coco_negatives"] is False and demo["dataset"]["coco_allow_missing_images"] is False
    for override, fragment in (("evaluate.sets=[coco]", "choose one or more of: val, coco_person"),
                               ("dataset.coco_url=ftp://mirror", "must be an http:// or https:// address"),
                               ("dataset.coco_negatives=yes please", "expected bool")):
        with pytest.raises(UserError, match=re.escape(fragment)):
            config.load(DEMO, [override])


# ------------------------------------------------------------------------------ the stage
def stage(root: Path, *extra, env=None):
    return run_module("dataset", ["--config", DEMO, "evaluate.sets=[val, coco_person]", *extra], root,
                      env={"PIPELINE_OFFLINE": "1", **(env or {})})


def test_stage_builds_both_sets_from_the_archives_and_is_then_up_to_date(tmp_path, demo_raw):
    root = demo_root(tmp_path, demo_raw)
    src = tmp_path / "made"
    make_coco_raw(src)
    raw = root / "datasets/coco/raw"
    zip_coco(src, raw)  # the user put the two archives in raw/
    proc = stage(root)
    assert proc.returncode == 0, proc.stderr
    assert (raw / "val2017").is_dir() and (raw / "annotations/instances_val2017.json").is_file()
    assert not (raw / "annotations/captions_val2017.json").exists()  # only what the set needs
    assert (raw / "val2017.zip").is_file()  # the download itself is kept
    assert json.loads((root / "datasets/coco/yolo/manifest.json").read_text())["counts"]["images"] == 7
    assert (root / "datasets/demo/yolo/manifest.json").is_file()
    again = stage(root)
    assert again.returncode == 0 and again.stdout.count("is up to date") == 2
    # a COCO option rebuilds the COCO set only; the old one is moved aside
    changed = stage(root, "dataset.coco_negatives=true")
    assert changed.returncode == 0 and changed.stdout.count("is up to date") == 1
    assert [p.name.split(".old-")[0] for p in (root / "datasets/coco").iterdir() if ".old-" in p.name] == ["yolo"]


def test_annotations_without_a_person_category(tmp_path, demo_raw):
    root = demo_root(tmp_path, demo_raw)
    data = instances()
    data["categories"] = [c for c in data["categories"] if c["name"] != "person"]
    make_coco_raw(root / "datasets/coco/raw", data)
    line = one_error(stage(root))
    assert "instances_val2017.json has no 'person' category (its categories: bicycle, car)" in line
    assert "annotations_trainval2017.zip" in line
    assert not (root / "datasets/coco/yolo").exists()


def test_missing_images_are_counted_and_stop_unless_allowed(tmp_path, demo_raw):
    root = demo_root(tmp_path, demo_raw)
    raw = root / "datasets/coco/raw"
    make_coco_raw(raw)
    for i in (2, 9):
        (raw / "val2017" / f"{i:012d}.jpg").unlink()
    line = one_error(stage(root))
    assert "2 of the 7 images person_val2017 needs are absent from datasets/coco/raw/val2017/" in line
    assert "dataset.coco_allow_missing_images=true" in line
    assert not (root / "datasets/coco/yolo").exists()

    proc = stage(root, "dataset.coco_allow_missing_images=true")
    assert proc.returncode == 0, proc.stderr
    assert "2 of the 7 images" in proc.stderr and "going on with the 5 present" in proc.stderr
    m = json.loads((root / "datasets/coco/yolo/manifest.json").read_text())
    assert m["counts"]["images"] == 5 and m["counts"]["missing_images"] == 2
    assert m["counts"]["missing_files"] == ["000000000002.jpg", "000000000009.jpg"]
    gt = json.loads((root / "datasets/coco/yolo/person_val2017.json").read_text())
    assert {a["image_id"] for a in gt["annotations"]} == {1, 3, 4, 8, 10}  # no ground truth without its image


def test_truncated_archive_is_refused_and_nothing_extracted(tmp_path, demo_raw):
    root = demo_root(tmp_path, demo_raw)
    src = tmp_path / "made"
    make_coco_raw(src)
    raw = root / "datasets/coco/raw"
    images_zip, _ = zip_coco(src, raw)
    images_zip.write_bytes(images_zip.read_bytes()[: images_zip.stat().st_size // 2])
    line = one_error(stage(root))
    assert "datasets/coco/raw/val2017.zip is corrupt or truncated" in line
    assert "http://images.cocodataset.org/zips/val2017.zip" in line
    assert not (raw / "val2017").exists() and images_zip.is_file()  # the user's file stays
    assert not [p for p in raw.rglob("*") if ".tmp-" in p.name or ".partial-" in p.name]  # nothing half-extracted


def test_offline_lists_every_missing_file_once(tmp_path, demo_raw):
    root = demo_root(tmp_path, demo_raw)
    lines = refusal(stage(root), 2, "dataset")
    assert "missing COCO 2017 annotations (annotations_trainval2017.zip" in lines[0]
    assert "http://images.cocodataset.org/annotations/annotations_trainval2017.zip" in lines[0]
    assert "put it at datasets/coco/raw/annotations_trainval2017.zip" in lines[0]
    assert "missing COCO val2017 images (val2017.zip" in lines[1] and "offline (OFFLINE=1)" in lines[1]
    assert "put it at datasets/coco/raw/val2017.zip" in lines[1]
    assert not (root / "datasets/demo/yolo").exists()  # nothing is converted before everything is there


# ------------------------------------------------------------------------------ evaluation
@pytest.fixture(scope="module")
def untrained_pt(tmp_path_factory) -> Path:
    """A one-class YOLO11n with its initial weights: nothing is trained, but every part of the
    evaluation runs on it (it detects little, and that is scored like anything else)."""
    folder = tmp_path_factory.mktemp("model")
    path = folder / "best.pt"
    # in a process of its own, with ultralytics set up as the stages set it up (offline, settings
    # inside the scratch folder), so this session's ultralytics state stays untouched
    script = ("import sys, torch; from services.common import yolo_env; yolo_env.prepare(sys.argv[1]); "
              "from ultralytics.nn.tasks import DetectionModel; torch.manual_seed(0); "
              "torch.save({'model': DetectionModel('yolo11n.yaml', nc=1, verbose=False)}, sys.argv[2])")
    proc = subprocess.run([sys.executable, "-c", script, str(folder), str(path)], cwd=ROOT,
                          env=stage_env(folder), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return path


def test_evaluation_scores_coco_person_without_a_miss_rate(tmp_path, untrained_pt):
    make_coco_raw(tmp_path / "datasets/coco/raw")
    build(tmp_path)
    (tmp_path / "artifacts/demo/weights").mkdir(parents=True)
    shutil.copyfile(untrained_pt, tmp_path / "artifacts/demo/weights/best.pt")
    args = ["--config", DEMO, "evaluate.sets=[coco_person]", "evaluate.imgsz=64", "evaluate.conf=0.0001"]
    proc = run_module("evaluate", args, tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    m = json.loads((tmp_path / "artifacts/demo/metrics/pt.json").read_text())
    s = m["sets"]["coco_person"]
    assert s["images"] == 7 and s["detections"] > 0
    assert s["miss_rate"] is None and "not applicable" in s["miss_rate_note"] and "mr_fppi_curves" not in s
    assert "ultralytics_val" not in m  # that one runs on the CityPersons val split only

    # the scored detections give the same numbers in a direct pycocotools run
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval
    from services.evaluate import scoring
    gt = COCO(str(tmp_path / "datasets/coco/yolo/person_val2017.json"))
    e = COCOeval(gt, gt.loadRes(json.loads((tmp_path / s["detections_file"]).read_text())), "bbox")
    e.evaluate(), e.accumulate(), e.summarize()
    assert [s["coco"][k] for k in scoring.COCO_STATS] == [float(x) for x in e.stats]

    summary = (tmp_path / "artifacts/demo/metrics/summary.md").read_text()
    row = [r for r in summary.splitlines() if r.startswith("| pt | coco_person |")]
    assert len(row) == 1 and "| n/a | n/a |" in row[0] and "| 7 |" in row[0]
    said = [line for line in proc.stdout.splitlines() if line.startswith("evaluate: pt on coco_person: AP50")]
    assert len(said) == 1 and "MR-2" not in said[0]


def test_evaluation_without_the_coco_set_says_how_to_get_it_or_drop_it(tmp_path, untrained_pt):
    (tmp_path / "artifacts/demo/weights").mkdir(parents=True)
    shutil.copyfile(untrained_pt, tmp_path / "artifacts/demo/weights/best.pt")
    for sets in ("[coco_person, val]", "[coco_person]"):
        line = one_error(run_module("evaluate", ["--config", DEMO, f"evaluate.sets={sets}"], tmp_path))
        assert "evaluation set 'coco_person' needs datasets/coco/yolo/person_val2017.json" in line
        assert "run `make dataset` first" in line and 'ARGS="evaluate.sets=[val]"' in line
