"""COCO val2017 persons: the second evaluation set (evaluate.sets: coco_person).

Input, under datasets/coco/raw/ (fetched from the official archives when missing and the network
allows; never modified):
    annotations/instances_val2017.json   from annotations_trainval2017.zip
    val2017/*.jpg                        from val2017.zip
Output, under datasets/coco/yolo/ (built in a temporary folder and renamed into place):
    person_val2017.json   for pycocotools: the person category only (id 1, as in COCO), the images
                          that contain a person (dataset.coco_negatives: all of them), every person
                          annotation kept as it is, crowds included, so pycocotools ignores
                          detections on a crowd instead of counting them as false positives
    val/images/           the same images, hard-linked from raw/val2017/
    val/labels/           YOLO labels, class 0 person; crowd boxes are not labels (YOLO has no
                          "ignore"), so ultralytics' own val counts detections on crowds as wrong
    person_val2017.yaml   the ultralytics data file for that set
    manifest.json         counts, policy, the annotation file's checksum, provenance
"""
import json
import os
import time
from pathlib import Path

from tqdm import tqdm

from services.common import files, manifest, paths
from services.common.log import UserError, info, table, warn

from . import download
from .citypersons import Linker, record_moved_aside, yolo_lines

STAGE = "dataset"
NAME = "coco"  # datasets/coco/
CONVERTER_VERSION = 1
PERSON_CATEGORY = {"supercategory": "person", "id": 1, "name": "person"}  # COCO's own id, and the evaluator's


def sources(base_url: str) -> dict:
    """The official archives (sizes and md5 as cocodataset.org publishes them)."""
    base = base_url.rstrip("/")
    return {
        "annotations": download.Source("COCO 2017 annotations", f"{base}/annotations/annotations_trainval2017.zip",
                                       size=252907541, md5="f4bbac642086de4f52a3fdda2de5fa2c"),
        "images": download.Source("COCO val2017 images", f"{base}/zips/val2017.zip",
                                  size=815585330, md5="442b8da7639aecaf257c1dceb8ba8c80"),
    }


def raw_inputs(root: Path) -> tuple[Path, Path]:
    raw = paths.raw_dir(NAME, root)
    return raw / "annotations" / "instances_val2017.json", raw / "val2017"


# ---------------------------------------------------------------------------------------- fetch
def fetch(cfg: dict, root: Path, online: bool) -> list[str]:
    """Make raw/ complete: extract a zip that is there, download one that is not (when online).
    Returns one line per file the user must fetch by hand; [] when everything is in place. Touches
    the network only for what is missing."""
    raw = paths.raw_dir(NAME, root)
    ann_file, images_dir = raw_inputs(root)
    src = sources(cfg["dataset"]["coco_url"])
    problems = []
    for source, target, prefix in ((src["annotations"], ann_file, "annotations/instances_val2017.json"),
                                   (src["images"], images_dir, "val2017/")):
        if target.exists():
            continue
        zip_path = raw / source.file
        try:
            if not zip_path.is_file():
                if not online:
                    problems.append(download.by_hand(source, zip_path, "offline (OFFLINE=1)",
                                                     f"or extract it there: {paths.rel(target, root)}"))
                    continue
                download.fetch(source, zip_path, paths.dataset_dir(NAME, root) / ".downloads")
            info(STAGE, f"extracting {prefix.rstrip('/')} from {paths.rel(zip_path, root)}")
            download.extract(zip_path, prefix, target, root=root,
                             hint=f"download it again from {source.url} ({source.size} bytes) and replace it")
        except UserError as e:
            problems.append(str(e))
    return problems


# ---------------------------------------------------------------------------------------- policy
def read_instances(path: Path, root: Path) -> dict:
    where = (f"extract annotations/instances_val2017.json again from annotations_trainval2017.zip "
             f"({sources('http://images.cocodataset.org')['annotations'].url})")
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise UserError(f"{paths.rel(path, root)} is not readable JSON ({str(e)[:80]}); {where}")
    if not isinstance(data, dict) or not all(isinstance(data.get(k), list)
                                             for k in ("images", "annotations", "categories")):
        raise UserError(f"{paths.rel(path, root)} is not a COCO instances file (it needs images, annotations "
                        f"and categories lists); {where}")
    return data


def person_category_id(data: dict, path: Path, root: Path) -> int:
    ids = [c["id"] for c in data["categories"] if c.get("name") == "person"]
    if not ids:
        names = ", ".join(str(c.get("name")) for c in data["categories"][:10]) or "none"
        raise UserError(f"{paths.rel(path, root)} has no 'person' category (its categories: {names}); "
                        f"person_val2017 is built from COCO's instances_val2017.json, in "
                        f"annotations_trainval2017.zip from http://images.cocodataset.org/annotations/")
    return ids[0]


def select(data: dict, person_id: int, negatives: bool):
    """The images of the set (sorted by id) and their person annotations."""
    persons = [a for a in data["annotations"] if a["category_id"] == person_id]
    with_person = {a["image_id"] for a in persons}
    images = sorted((im for im in data["images"] if negatives or im["id"] in with_person), key=lambda im: im["id"])
    return images, persons, with_person


def person_lines(annotations: list[dict], width: int, height: int):
    """Class-0 lines for the non-crowd person boxes, clipped to the frame, and what happened."""
    return yolo_lines([a["bbox"] for a in annotations if not a.get("iscrowd", 0)], width, height)


def ultralytics_yaml() -> str:
    return ("# Written by `python -m services.dataset`; do not edit (it is rebuilt).\n"
            "# COCO val2017, person only, for evaluation: `yolo val data=<this file> split=test`. Paths are\n"
            "# relative to this file's folder; ultralytics requires a `train` entry, so it names the same images.\n"
            "train: val/images\nval: val/images\ntest: val/images\nnames:\n  0: person\n")


def fingerprint(cfg: dict, ann_file: Path, images_dir: Path, root: Path) -> dict:
    d = cfg["dataset"]
    jpgs = [e.stat().st_size for e in os.scandir(images_dir) if e.is_file()]
    return {
        "converter_version": CONVERTER_VERSION,
        "policy": {"negatives": d["coco_negatives"], "allow_missing_images": d["coco_allow_missing_images"],
                   "link": d["link"]},
        "sha256": {ann_file.name: files.sha256_cached(ann_file, paths.dataset_dir(NAME, root) / ".checksums.json")},
        "image_files": len(jpgs), "image_bytes": sum(jpgs),
    }


# ---------------------------------------------------------------------------------------- stage
def build(cfg: dict, root: Path = paths.ROOT, force: bool = False) -> dict:
    """Build datasets/coco/yolo/ unless its manifest says it is up to date. Returns the manifest."""
    started, t0 = manifest.now(), time.perf_counter()
    d = cfg["dataset"]
    ann_file, images_dir = raw_inputs(root)
    out_dir = paths.yolo_dir(NAME, root)
    for path in (ann_file, images_dir):
        if not path.exists():
            raise UserError(f"missing {paths.rel(path, root)}; run `make dataset` on a connected machine "
                            f"(it downloads the COCO archives), or see docs/thesis/data.md")
    fp = fingerprint(cfg, ann_file, images_dir, root)
    old = files.read_json(out_dir / "manifest.json")
    if old and old.get("fingerprint") == fp and not force:
        info(STAGE, f"{paths.rel(out_dir, root)} is up to date (inputs and policy unchanged); FORCE=1 rebuilds it")
        return old

    data = read_instances(ann_file, root)
    person_id = person_category_id(data, ann_file, root)
    images, persons, with_person = select(data, person_id, d["coco_negatives"])
    images, absent = present_images(images, images_dir, d, root)
    link = Linker(d["link"])
    with files.build_dir(out_dir, same_inputs=bool(old) and old.get("fingerprint") == fp) as build:
        n = write_labels(images, persons, images_dir, build.path, link)
        annotations = write_ground_truth(data, images, persons, d, build.path)
        counts = {
            "images": len(images),
            "images_with_person": sum(1 for im in images if im["id"] in with_person),
            "negatives": sum(1 for im in images if im["id"] not in with_person),
            "person_annotations": len(annotations), "crowd": sum(1 for a in annotations if a.get("iscrowd", 0)),
            "boxes": n["boxes"], "clipped": n["clipped"], "degenerate": n["degenerate"],
            "missing_images": len(absent), "missing_files": [im["file_name"] for im in absent],
            "listed_images": len(data["images"]),
            "other_categories_dropped": len(data["annotations"]) - len(persons),
        }
        result = {**manifest.provenance(STAGE, cfg, []), "fingerprint": fp, "policy": policy(d, person_id),
                  "counts": counts, "images_placed": dict(link.used), "bytes_copied": link.bytes_copied,
                  "moved_aside": None,
                  "started": started, "finished": manifest.now(), "wall_s": round(time.perf_counter() - t0, 3)}
        files.atomic_write_json(build.path / "manifest.json", result)
    record_moved_aside(result, build, out_dir, root, old)
    info(STAGE, link.summary())
    c = counts
    print(table(["set", "images", "with person", "negatives", "person boxes", "crowd", "missing"],
                [["coco person val2017", c["images"], c["images_with_person"], c["negatives"], c["boxes"],
                  c["crowd"], c["missing_images"]]], title=f"\n{paths.rel(out_dir, root)}"))
    return result


def present_images(images: list, images_dir: Path, d: dict, root: Path) -> tuple[list, list]:
    """(the images whose files are there, the absent ones): absent ones are refused in one line, or, with
    dataset.coco_allow_missing_images, left out with a warning and listed in the manifest."""
    absent = [im for im in images if not _present(images_dir / im["file_name"])]
    if not absent:
        return images, []
    what = (f"{len(absent)} of the {len(images)} images person_val2017 needs are absent from "
            f"{paths.rel(images_dir, root)}/, e.g. {absent[0]['file_name']}")
    if not d["coco_allow_missing_images"]:
        raise UserError(f"{what}; extract val2017.zip again (move the incomplete val2017/ aside first), or "
                        f"set dataset.coco_allow_missing_images=true to go on with the "
                        f"{len(images) - len(absent)} present")
    warn(STAGE, f"{what}; going on with the {len(images) - len(absent)} present "
                f"(dataset.coco_allow_missing_images=true; the manifest lists them)")
    gone = {im["id"] for im in absent}
    return [im for im in images if im["id"] not in gone], absent


def write_labels(images: list, persons: list, images_dir: Path, out: Path, link) -> dict:
    """val/images (linked or copied) and val/labels (YOLO boxes, clipped to the frame); box counts."""
    by_image = {}
    for a in persons:
        by_image.setdefault(a["image_id"], []).append(a)
    n = {"clipped": 0, "degenerate": 0, "boxes": 0}
    (out / "val" / "images").mkdir(parents=True)
    (out / "val" / "labels").mkdir(parents=True)
    for im in tqdm(images, desc="coco person", unit="img", mininterval=0.5, leave=False):
        lines, clipped, degenerate = person_lines(by_image.get(im["id"], []), im["width"], im["height"])
        link(images_dir / im["file_name"], out / "val" / "images" / im["file_name"])
        (out / "val" / "labels" / (Path(im["file_name"]).stem + ".txt")).write_text(
            "".join(line + "\n" for line in lines))
        n["boxes"] += len(lines)
        n["clipped"] += clipped
        n["degenerate"] += degenerate
    return n


def write_ground_truth(data: dict, images: list, persons: list, d: dict, out: Path) -> list:
    """person_val2017.json (pycocotools' ground truth, crowd kept) and the ultralytics data YAML;
    returns the person annotations kept."""
    kept = {im["id"] for im in images}
    annotations = [{**a, "category_id": PERSON_CATEGORY["id"]} for a in persons if a["image_id"] in kept]
    gt = {"info": {**(data.get("info") or {}),
                   "description": "COCO val2017, person category only (built by services.dataset): images "
                                  "with a person" + (" and images without one" if d["coco_negatives"] else "")
                                  + "; crowd annotations kept (iscrowd=1), so pycocotools ignores them"},
          "licenses": data.get("licenses", []),
          "images": images, "annotations": annotations, "categories": [PERSON_CATEGORY]}
    files.atomic_write_json(out / "person_val2017.json", gt)
    (out / "person_val2017.yaml").write_text(ultralytics_yaml())
    return annotations


def policy(d: dict, person_id: int) -> dict:
    return {"negatives": d["coco_negatives"],
            "negatives_means": "images without a person annotation are "
                               + ("included" if d["coco_negatives"] else "left out"),
            "allow_missing_images": d["coco_allow_missing_images"],
            "category": {"source_id": person_id, "id": PERSON_CATEGORY["id"], "yolo_class": 0},
            "crowd": "kept in person_val2017.json (iscrowd=1, ignored by pycocotools); not in the YOLO labels",
            "clip_to_frame": True}


def _present(path: Path) -> bool:
    try:
        return path.stat().st_size > 0  # an empty file is a failed extraction, not an image
    except OSError:
        return False
