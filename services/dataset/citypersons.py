"""CityPersons -> YOLO.

Input, under datasets/<name>/raw/ (never modified; a zip is extracted beside itself once):
    leftImg8bit/{train,val}/<city>/*.png   or   leftImg8bit_trainvaltest.zip
    anno_train.mat, anno_val.mat
fetch() downloads the .mat files when they are missing and the network allows (they are public),
and the Cityscapes zip only with the user's account (CITYSCAPES_USERNAME / CITYSCAPES_PASSWORD);
otherwise it says where to get them. convert() never touches the network.
Output, under datasets/<name>/yolo/ (built in a temporary folder and renamed into place):
    {train,selection,val}/{images,labels}/, <name>.yaml (for ultralytics), val_gt.json (official
    miss-rate ground truth), val_coco.json (for pycocotools), calib.txt, manifest.json

The .mat format and its pitfalls are described in ../shared/data/citypersons/README.md: bbs rows are
[class, x1, y1, w, h, instance_id, x1_vis, y1_vis, w_vis, h_vis], class 0 ignore region,
1 pedestrian, 2 rider, 3 sitting person, 4 other person, 5 group of people.
"""
import os
import random
import sys
import shutil
import struct
import time
from collections import Counter, defaultdict
from pathlib import Path

import numpy as np
from tqdm import tqdm

from services.common import files, manifest, paths, space
from services.common.log import UserError, info, table, warn

from . import download

STAGE = "dataset"
# Bump when the output format or the label rules change: older outputs are then rebuilt.
CONVERTER_VERSION = 1
MAT_CLASSES = {0: "ignore", 1: "pedestrian", 2: "rider", 3: "sitting", 4: "other", 5: "group"}
CLASS_ID = {name: cid for cid, name in MAT_CLASSES.items()}
SPLITS = ("train", "val")
WHERE_MAT = "download it from https://github.com/cvgroup-njust/CityPersons (annotations/{file})"
WHERE_IMAGES = ("download leftImg8bit_trainvaltest.zip from https://www.cityscapes-dataset.com/downloads/ "
                "(free account needed)")
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
CITYSCAPES_ZIP = "leftImg8bit_trainvaltest.zip"
CITYSCAPES_SITE = "https://www.cityscapes-dataset.com"  # what cityscapesscripts' downloader hard-codes
CITYSCAPES_REGISTER = f"{CITYSCAPES_SITE}/register/"
CITYSCAPES_LOGIN = f"{CITYSCAPES_SITE}/login"
# The annotation files of the CityPersons repository, as pinned from the published files.
MAT_FILES = {"train": (387145, "1e9675594e2d30772b40c046a9e3e9b24604d43c20dd93121f35d864e63bdd06"),
             "val": (77204, "e234f73b47d7e9c0dfa23a91a2bd8bd222b68a5f5fe7061e8bbfefa3435aac96")}


# ---------------------------------------------------------------------------------------- fetch
def mat_sources(base_url: str) -> dict:
    base = base_url.rstrip("/")
    return {split: download.Source(f"CityPersons {split} annotations", f"{base}/anno_{split}.mat",
                                   size=size, sha256=sha256)
            for split, (size, sha256) in MAT_FILES.items()}


def fetch(cfg: dict, root: Path, online: bool) -> list[str]:
    """Make raw/ complete where that can be done: download missing .mat files (public) and, with the
    user's Cityscapes account, the image zip. Returns one line per file the user must fetch by hand;
    [] when everything is in place. Touches the network only for what is missing."""
    d = cfg["dataset"]
    raw = paths.raw_dir(d["name"], root)
    partial_dir = paths.dataset_dir(d["name"], root) / ".downloads"
    problems = []
    for split, source in mat_sources(d["citypersons_url"]).items():
        mat = raw / f"anno_{split}.mat"
        if mat.is_file():
            continue
        if not online:
            problems.append(download.by_hand(source, mat, "offline (OFFLINE=1)"))
            continue
        try:
            download.fetch(source, mat, partial_dir)
        except UserError as e:
            problems.append(str(e))
    if not (raw / "leftImg8bit").is_dir() and not (raw / CITYSCAPES_ZIP).is_file():
        problem = fetch_cityscapes(raw / CITYSCAPES_ZIP, partial_dir, root, online, d["cityscapes_url"])
        if problem:
            problems.append(problem)
    return problems


def fetch_cityscapes(zip_path: Path, partial_dir: Path, root: Path, online: bool,
                     site: str = CITYSCAPES_SITE):
    """Download the Cityscapes images with cityscapesscripts' downloader when the user gave an
    account; otherwise (or if that fails) the line saying how to get them. None when done.
    `site` is dataset.cityscapes_url: the Cityscapes site or a mirror of it."""
    user, password = os.environ.get("CITYSCAPES_USERNAME"), os.environ.get("CITYSCAPES_PASSWORD")
    by_hand = (f"register (free) at {CITYSCAPES_REGISTER}, download {CITYSCAPES_ZIP} from "
               f"https://www.cityscapes-dataset.com/downloads/ and put it at {paths.rel(zip_path, root)} "
               f"(or its extracted leftImg8bit/{{train,val}}/ in {paths.rel(zip_path.parent, root)}/)")
    what = f"missing Cityscapes images ({CITYSCAPES_ZIP}, 11 GB, free account needed)"
    if not (user and password):
        return (f"{what}: {by_hand}; or set CITYSCAPES_USERNAME and CITYSCAPES_PASSWORD and "
                f"`make dataset` downloads it")
    if not online:
        return f"{what}: offline (OFFLINE=1); {by_hand}"
    try:
        from cityscapesscripts.download import downloader  # in the train lock; imported only when needed
    except ImportError:
        return (f"{what}: CITYSCAPES_USERNAME is set but cityscapesscripts (its downloader) is not installed; "
                f"run `{sys.executable} -m pip install cityscapesscripts` and `make dataset` again, or {by_hand}")
    partial_dir.mkdir(parents=True, exist_ok=True)
    part = partial_dir / CITYSCAPES_ZIP  # the downloader names the file itself; it resumes from it
    try:
        session = cityscapes_login(user, password, site)
        info(STAGE, f"downloading {CITYSCAPES_ZIP} (11 GB) with cityscapesscripts into {paths.rel(partial_dir, root)}/")
        # It verifies the md5 the server publishes and raises a bare Exception on any failure.
        downloader.download_packages(session=session, package_names=[CITYSCAPES_ZIP],
                                     destination_path=str(partial_dir), resume=part.is_file())
    except UserError as e:
        return f"{what}: {e}; {by_hand}"
    except Exception as e:  # noqa: BLE001 (requests' and the downloader's own errors)
        if "MD5" in str(e):
            part.unlink(missing_ok=True)  # ours, and wrong: the next run starts over
            return (f"{what}: the download did not match its md5 and was discarded; run `make dataset` again, "
                    f"or {by_hand}")
        if getattr(getattr(e, "response", None), "status_code", None) == 416:
            # Nothing left to resume from: the kept part is whole (a run stopped during the md5
            # check) or longer than the file. The downloader cannot check it, so start over
            # rather than fail the same way on every run.
            part.unlink(missing_ok=True)
            return (f"{what}: the site would not resume the kept partial download; it was discarded, "
                    f"run `make dataset` again to download anew, or {by_hand}")
        kept = " (the partial download is kept; the next run resumes it)" if part.is_file() else ""
        return f"{what}: the Cityscapes download failed ({type(e).__name__}: {str(e)[:120]}){kept}; {by_hand}"
    else:
        os.replace(part, zip_path)
    finally:
        download._remove_if_empty(partial_dir)  # a partial zip worth resuming keeps it
    return None


def cityscapes_login(user: str, password: str, site: str = CITYSCAPES_SITE):
    """A logged-in session. cityscapesscripts' own login() prompts on the terminal (or reads a file
    in the home folder), which a stage in a container cannot do, so log in as it does, from the
    environment variables."""
    import requests

    class SiteSession(requests.Session):
        """Sends requests for CITYSCAPES_SITE to `site`. The downloader hard-codes the site's
        addresses but makes every request through the session it is given: this is how a mirror
        (dataset.cityscapes_url, or the tests' server on 127.0.0.1) stands in for the site."""
        def request(self, method, url, *args, **kwargs):
            if url.startswith(CITYSCAPES_SITE + "/"):
                url = site.rstrip("/") + url[len(CITYSCAPES_SITE):]
            kwargs.setdefault("timeout", download.TIMEOUT_S)  # the downloader sets none: a silent site hangs
            return super().request(method, url, *args, **kwargs)

    session = SiteSession()
    session.get(CITYSCAPES_LOGIN, allow_redirects=False, timeout=60).raise_for_status()
    r = session.post(CITYSCAPES_LOGIN, data={"username": user, "password": password, "submit": "Login"},
                     allow_redirects=False, timeout=60)
    r.raise_for_status()
    if r.status_code != 302:  # the site redirects after a successful login
        raise UserError("the Cityscapes login failed: check CITYSCAPES_USERNAME and CITYSCAPES_PASSWORD")
    return session


# ---------------------------------------------------------------------------------------- inputs
def read_mat(path: Path, split: str) -> list[dict]:
    """The records of anno_<split>.mat as plain dicts with bbs as an int64 (n, 10) array."""
    import scipy.io  # here: 0.15 s of import that an up-to-date dataset or a refused config does not need
    key = f"anno_{split}_aligned"
    try:
        mat = scipy.io.loadmat(path)
    except Exception as e:  # scipy raises several types for a file that is not a .mat
        raise UserError(f"{path} is not a readable .mat file ({e}); {WHERE_MAT.format(file=path.name)}")
    if key not in mat:
        found = [k for k in mat if not k.startswith("__")]
        raise UserError(f"{path} has no '{key}' (it has: {', '.join(found) or 'nothing'}); is it the "
                        f"CityPersons {split} annotation file? {WHERE_MAT.format(file=path.name)}")
    cells = np.asarray(mat[key], dtype=object).ravel()
    return [_record(cell, i, path, key, split) for i, cell in enumerate(cells)]


MAT_FIELDS = ("cityname", "im_name", "bbs")


def _record(cell, i: int, path: Path, key: str, split: str) -> dict:
    """One image's record, or one line naming the file, the record and the field that is not as the
    CityPersons files have it: {cityname, im_name, bbs (n x 10 numbers)} in a 1x1 struct."""
    def bad(what: str) -> UserError:
        return UserError(f"{paths.rel(path)}: {key}[{i}] {what}, so this is not the CityPersons {split} annotation "
                         f"file (or it is damaged); {WHERE_MAT.format(file=path.name)} and replace it")
    s = cell[0, 0] if isinstance(cell, np.ndarray) and cell.size == 1 and cell.ndim == 2 else None
    names = getattr(getattr(s, "dtype", None), "names", None) or ()
    if not names:
        raise bad(f"is not a struct of {', '.join(MAT_FIELDS)} (it holds a {type(cell).__name__} of shape "
                  f"{np.shape(cell)})")
    missing = [f for f in MAT_FIELDS if f not in names]
    if missing:
        raise bad(f"has no field {missing[0]} (its fields: {', '.join(names)})")
    text = {}
    for field in ("cityname", "im_name"):
        value = np.asarray(s[field]).ravel()
        if value.size != 1 or not isinstance(value[0], str):
            raise bad(f"field {field} is not one text ({value.size} value(s) of type {value.dtype})")
        text[field] = str(value[0])
    # bbs dtype varies per image (uint8/int16/uint16): cast before any arithmetic, uint8 overflows
    # on x1 + w. Images with one box can come back 1-D, images with none as (0, 10).
    raw = np.asarray(s["bbs"])
    try:
        bbs = raw.astype(np.int64)
    except (TypeError, ValueError):
        raise bad(f"field bbs holds {raw.dtype} values, not numbers") from None
    if bbs.size % 10 or (bbs.ndim == 2 and bbs.size and bbs.shape[1] != 10):
        raise bad(f"field bbs has shape {raw.shape}, not rows of 10 numbers (class, x, y, w, h, id, "
                  f"visible x, y, w, h)")
    return {"split": split, "city": text["cityname"], "name": text["im_name"], "bbs": bbs.reshape(-1, 10)}


def undecodable(images: list[Path], what: str) -> set[Path]:
    """The images among `images` whose pixel data does not decode. A PNG with a valid header and end
    chunk can still hold garbage; the splits a model is judged or calibrated on are decoded in full
    (in threads: the zlib inflate releases the GIL)."""
    from concurrent.futures import ThreadPoolExecutor

    from PIL import Image

    def bad(path: Path) -> bool:
        try:
            with Image.open(path) as im:
                im.load()
            return False
        except Exception:  # any decoder complaint means the same: the file cannot be used
            return True

    with ThreadPoolExecutor(max_workers=os.cpu_count() or 1) as pool:
        flags = list(tqdm(pool.map(bad, images), total=len(images), desc=f"{what:>9}", unit="img",
                          mininterval=0.5, leave=False))
    return {p for p, f in zip(images, flags) if f}


def png_size(path: Path):
    """(width, height) from the PNG header, or None if the file is not a whole PNG.

    Reads 33 bytes at the start and 12 at the end (the IEND chunk), so a truncated download is caught
    without decoding 3475 images of 2 MB each.
    """
    try:
        with open(path, "rb") as f:
            head = f.read(33)
            if len(head) < 33 or head[:8] != PNG_SIGNATURE or head[12:16] != b"IHDR":
                return None
            f.seek(-12, os.SEEK_END)
            if f.read(12)[4:8] != b"IEND":
                return None
    except OSError:
        return None
    w, h = struct.unpack(">II", head[16:24])
    return (w, h) if w > 0 and h > 0 else None


def find_images(raw: Path, root: Path) -> Path:
    """The leftImg8bit folder, extracting train and val from the Cityscapes zip the first time."""
    folder, zip_path = raw / "leftImg8bit", raw / "leftImg8bit_trainvaltest.zip"
    if folder.is_dir():
        return folder
    if not zip_path.is_file():
        raise UserError(f"no Cityscapes images: neither {paths.rel(folder, root)}/ nor "
                        f"{paths.rel(zip_path, root)} exists; {WHERE_IMAGES} and put it in {paths.rel(raw, root)}/")
    download.extract(zip_path, ("leftImg8bit/train/", "leftImg8bit/val/"), folder,  # test has no annotations
                     hint=f"{WHERE_IMAGES} again and replace it", root=root,
                     empty=f"holds no leftImg8bit/train or leftImg8bit/val images; is it {CITYSCAPES_ZIP}? "
                           f"{WHERE_IMAGES}")
    return folder


# Keys that change other outputs (the COCO set) or only where files come from, not this output: a
# change there must not rebuild the CityPersons dataset. The proxy's keys shape raw/ itself, which
# the fingerprint already covers (the .mat checksums, the image bytes); leaving them out keeps the
# outputs and training runs made before they existed up to date.
NOT_THIS_OUTPUT = {"coco_negatives", "coco_allow_missing_images", "coco_url", "citypersons_url",
                   "cityscapes_url", "generate_proxy", "proxy_annotations", "proxy_train_images",
                   "proxy_val_images"}


def fingerprint(cfg: dict, raw: Path, images: Path, cache: Path) -> dict:
    """Everything the output depends on. If it equals the manifest's, the stage has nothing to do."""
    pngs = [e for split in SPLITS for e in _scan(images / split)]
    fp = {
        "converter_version": CONVERTER_VERSION,
        "dataset_config": {k: v for k, v in cfg["dataset"].items() if k not in NOT_THIS_OUTPUT},
        "sha256": {f"anno_{s}.mat": files.sha256_file(raw / f"anno_{s}.mat") for s in SPLITS},
        "image_files": len(pngs),
        "image_bytes": sum(size for size in pngs),
    }
    zip_path = raw / "leftImg8bit_trainvaltest.zip"
    if zip_path.is_file():
        fp["sha256"][zip_path.name] = files.sha256_cached(zip_path, cache)
    return fp


def _scan(folder: Path):
    if not folder.is_dir():
        return
    for city in os.scandir(folder):
        if city.is_dir():
            for e in os.scandir(city.path):
                if e.name.endswith(".png"):
                    yield e.stat().st_size


# ---------------------------------------------------------------------------------------- policy
def split_selection(records: list[dict], fraction: float, seed: int):
    """Hold out whole city sequences (<city>_<seq>_...) from train, so no near-duplicate frame of a
    selection image is trained on. Returns (train, selection)."""
    if fraction <= 0:
        return records, []
    by_seq = defaultdict(list)
    for r in records:
        by_seq["_".join(r["name"].split("_")[:2])].append(r)
    seqs = sorted(by_seq)
    random.Random(seed).shuffle(seqs)
    # Cityscapes mixes one-frame sequences with drives of up to 248 frames: take a sequence only if
    # it brings the count closer to the target, so one long drive cannot overshoot the fraction.
    target, chosen, n = fraction * len(records), set(), 0
    for s in seqs:
        if abs(n + len(by_seq[s]) - target) < abs(n - target):
            chosen.add(s)
            n += len(by_seq[s])
    train = [r for r in records if "_".join(r["name"].split("_")[:2]) not in chosen]
    selection = [r for r in records if "_".join(r["name"].split("_")[:2]) in chosen]
    return train, selection


def record_moved_aside(result: dict, build, out_dir: Path, root: Path, old: dict | None) -> None:
    """After build_dir renamed the new output into place: say what happened to the old one and why,
    in the manifest and on the terminal."""
    if build.replaced:
        info(STAGE, f"FORCE=1: rebuilt {paths.rel(out_dir, root)} from unchanged inputs and policy; "
                    f"the previous output was replaced")
    if build.moved_aside:
        result["moved_aside"] = paths.rel(build.moved_aside, root)
        files.atomic_write_json(out_dir / "manifest.json", result)
        info(STAGE, f"the previous output was built from other {changed(old, result['fingerprint'])}; "
                    f"moved it aside to {paths.rel(build.moved_aside, root)}")


def changed(old: dict | None, new: dict) -> str:
    """What differs between an old output's fingerprint and the new one, in words."""
    old_fp = (old or {}).get("fingerprint") or {}
    if not old_fp:
        return "inputs (it has no readable manifest)"
    keys = []
    for k, v in new.items():
        if isinstance(v, dict) and isinstance(old_fp.get(k), dict):
            keys += [f"{k}.{kk}" for kk in sorted(set(v) | set(old_fp[k])) if v.get(kk) != old_fp[k].get(kk)]
        elif old_fp.get(k) != v:
            keys.append(k)
    return "inputs or policy (" + ", ".join(keys or ["its manifest"]) + ")"


def yolo_labels(bbs: np.ndarray, width: int, height: int, positive_ids: set):
    """YOLO lines for the positive boxes (full-body boxes clipped to the frame) and what happened."""
    return yolo_lines([(x, y, w, h) for c, x, y, w, h in bbs[:, :5] if c in positive_ids], width, height)


def yolo_lines(boxes, width: int, height: int):
    """Class-0 YOLO lines for (x, y, w, h) pixel boxes clipped to the frame; how many were clipped,
    and how many were dropped as degenerate (under a pixel wide or tall once clipped)."""
    lines, clipped, degenerate = [], 0, 0
    for x, y, w, h in boxes:
        x1, y1, x2, y2 = max(x, 0), max(y, 0), min(x + w, width), min(y + h, height)
        if x2 - x1 < 1 or y2 - y1 < 1:
            degenerate += 1
            continue
        clipped += (x1, y1, x2, y2) != (x, y, x + w, y + h)
        lines.append(f"0 {(x1 + x2) / 2 / width:.6f} {(y1 + y2) / 2 / height:.6f} "
                     f"{(x2 - x1) / width:.6f} {(y2 - y1) / height:.6f}")
    return lines, clipped, degenerate


def val_gt(records: list[dict], sizes: dict) -> dict:
    """The official miss-rate ground truth (evaluation/val_gt.json of the CityPersons repository).

    Image ids are 1..N in file-name order over all annotated images; images that could not be read
    are left out but keep the ids the official file gives the others.
    """
    categories = [{"id": 1, "name": "pedestrian"}, {"id": 2, "name": "rider"},
                  {"id": 3, "name": "sitting person"}, {"id": 4, "name": "other person"},
                  {"id": 5, "name": "people group"}, {"id": 0, "name": "ignore region"}]
    images, annotations = [], []
    for image_id, r in enumerate(sorted(records, key=lambda r: r["name"]), start=1):
        if r["name"] not in sizes:
            continue
        w, h = sizes[r["name"]]
        images.append({"id": image_id, "im_name": r["name"], "height": h, "width": w})
        for c, x, y, bw, bh, _, vx, vy, vw, vh in r["bbs"].tolist():
            # 12 significant digits, as the official file was written
            ratio = float(f"{vw * vh / (bw * bh):.12g}") if bw * bh else 0
            annotations.append({
                "id": len(annotations) + 1, "image_id": image_id, "category_id": 1,
                "iscrowd": int(c == 5), "ignore": int(c != 1),
                "bbox": [x, y, bw, bh], "vis_bbox": [vx, vy, vw, vh], "height": bh,
                # the official file writes 1, not 1.0, for fully visible boxes
                "vis_ratio": 1 if ratio == 1 else ratio})
    return {"categories": categories, "images": images, "annotations": annotations}


def val_coco(gt: dict) -> dict:
    """The same split for pycocotools, which knows only `iscrowd` as "ignore": pedestrians are normal
    annotations and everything the official protocol ignores becomes iscrowd=1."""
    anns = [{"id": a["id"], "image_id": a["image_id"], "category_id": 1, "bbox": a["bbox"],
             "area": a["bbox"][2] * a["bbox"][3], "iscrowd": int(a["ignore"] == 1)}
            for a in gt["annotations"]]
    images = [{"id": i["id"], "file_name": i["im_name"], "height": i["height"], "width": i["width"]}
              for i in gt["images"]]
    return {"info": {"description": "CityPersons val for pycocotools: pedestrians are positives, "
                                     "every region the official protocol ignores is iscrowd=1"},
            "categories": [{"id": 1, "name": "person", "supercategory": "person"}],
            "images": images, "annotations": anns}


# ---------------------------------------------------------------------------------------- output
class Linker:
    """Puts images into yolo/ without copying 11 GB: hard link, else relative symlink, else copy."""

    def __init__(self, method: str):
        self.method, self.used, self.bytes_copied = method, Counter(), 0

    def __call__(self, src: Path, dst: Path) -> None:
        order = {"auto": ["hardlink", "symlink", "copy"]}.get(self.method, [self.method])
        for how in order:
            try:
                if how == "hardlink":
                    os.link(src, dst)
                elif how == "symlink":
                    os.symlink(os.path.relpath(src, dst.parent), dst)
                else:
                    shutil.copyfile(src, dst)
                    self.bytes_copied += dst.stat().st_size
                self.used[how] += 1
                return
            except OSError as e:
                if e.errno in space.FULL_ERRNOS:  # no other way will fit either: the stage's disk-full line
                    raise
                if how == order[-1]:
                    raise UserError(f"cannot place {src} in {dst.parent} by {how} ({e.strerror}); "
                                    f"check permissions and free space, or set dataset.link")

    def summary(self) -> str:
        verbs = {"hardlink": "hard-linked", "symlink": "symlinked", "copy": "copied"}
        done = ", ".join(f"{n} {verbs[how]}" for how, n in sorted(self.used.items()))
        return f"images {done or 'none'} ({self.bytes_copied} bytes copied)"


def write_split(out: Path, split: str, records: list[dict], images: Path, positive_ids: set,
                keep_background: bool, link: Linker, sizes: dict, decode: bool = False) -> dict:
    """Labels and linked images for one split; returns its counts. With `decode`, every image is
    decoded in full first and those that do not decode are left out (counted as unreadable)."""
    (out / split / "images").mkdir(parents=True)
    (out / split / "labels").mkdir(parents=True)
    n = Counter()
    by_class = Counter()
    unreadable = []
    sources = [images / r["split"] / r["city"] / r["name"] for r in records]
    headers = [png_size(src) for src in sources]
    garbage = undecodable([s for s, h in zip(sources, headers) if h], f"{split} px") if decode else set()
    for r, src, size in tqdm(list(zip(records, sources, headers)), desc=f"{split:>9}", unit="img", mininterval=0.5,
                             leave=False):
        if size is None or src in garbage:
            unreadable.append(paths.rel(src))
            continue
        sizes[r["name"]] = size
        lines, clipped, degenerate = yolo_labels(r["bbs"], *size, positive_ids)
        by_class.update(MAT_CLASSES.get(int(c), f"class_{c}") for c in r["bbs"][:, 0])
        if not lines and not keep_background:
            n["background_dropped"] += 1
            continue
        n["images"] += 1
        n["boxes"] += len(lines)
        n["clipped"] += clipped
        n["degenerate"] += degenerate
        n["background"] += not lines
        link(src, out / split / "images" / r["name"])
        (out / split / "labels" / (Path(r["name"]).stem + ".txt")).write_text(
            "".join(line + "\n" for line in lines))
    return {"images": n["images"], "boxes": n["boxes"], "clipped": n["clipped"],
            "degenerate": n["degenerate"], "background": n["background"],
            "background_dropped": n["background_dropped"], "unreadable": len(unreadable),
            "unreadable_files": unreadable, "annotations_by_class": dict(sorted(by_class.items()))}


def ultralytics_yaml(name: str, has_selection: bool) -> str:
    val = "selection/images" if has_selection else "val/images"
    return (f"# Written by `python -m services.dataset`; do not edit (it is rebuilt).\n"
            f"# Paths are relative to this file's folder. `val` picks best.pt and stops training early;\n"
            f"# `test` is the official CityPersons val split, the one results are reported on.\n"
            f"train: train/images\nval: {val}\ntest: val/images\nnames:\n  0: person\n")


# ---------------------------------------------------------------------------------------- stage
def convert(cfg: dict, root: Path = paths.ROOT, force: bool = False) -> dict:
    """Build datasets/<name>/yolo/ unless its manifest says it is up to date. Returns the manifest."""
    started, t0 = manifest.now(), time.perf_counter()
    d = cfg["dataset"]
    raw, out_dir = paths.raw_dir(d["name"], root), paths.yolo_dir(d["name"], root)
    for split in SPLITS:
        mat = raw / f"anno_{split}.mat"
        if not mat.is_file():
            raise UserError(f"missing {paths.rel(mat, root)}: {WHERE_MAT.format(file=mat.name)} "
                            f"and put it in {paths.rel(raw, root)}/")
    images = find_images(raw, root)
    fp = fingerprint(cfg, raw, images, paths.dataset_dir(d["name"], root) / ".checksums.json")

    old = files.read_json(out_dir / "manifest.json")
    if old and old.get("fingerprint") == fp and not force:
        info(STAGE, f"{paths.rel(out_dir, root)} is up to date (inputs and policy unchanged); "
                    f"FORCE=1 rebuilds it")
        return old

    space.require(STAGE, space.dataset_need(cfg, root))  # before the build, which keeps the old one beside it
    records = {s: read_mat(raw / f"anno_{s}.mat", s) for s in SPLITS}
    check_images_present(records, images, raw, root)

    train, selection = split_selection(records["train"], d["selection_fraction"], d["seed"])
    positive_ids = {CLASS_ID[c] for c in d["positives"]}
    link = Linker(d["link"])
    sizes = {}
    with files.build_dir(out_dir, same_inputs=bool(old) and old.get("fingerprint") == fp) as build:
        counts = {}
        for split, recs, keep in (("train", train, d["keep_background"]), ("selection", selection, True),
                                  ("val", records["val"], True)):
            # Background is dropped from train only when asked: the evaluation splits stay whole.
            # The splits a model is judged on are decoded in full; train only where calibration draws.
            counts[split] = write_split(build.path, split, recs, images, positive_ids, keep, link, sizes,
                                        decode=split != "train")
        gt = val_gt(records["val"], sizes)
        files.atomic_write_json(build.path / "val_gt.json", gt)
        files.atomic_write_json(build.path / "val_coco.json", val_coco(gt))
        calib = calibration_list(build.path, out_dir, d["calib_images"], d["seed"], root, counts["train"])
        (build.path / "calib.txt").write_text("".join(p + "\n" for p in calib))
        (build.path / f"{d['name']}.yaml").write_text(ultralytics_yaml(d["name"], bool(selection)))
        result = {
            **manifest.provenance(STAGE, cfg, ["numpy", "scipy"]),
            "fingerprint": fp,
            "policy": {"positives": d["positives"], "yolo_classes": {0: "person"},
                       "keep_background": d["keep_background"],
                       "not_positives": sorted(set(MAT_CLASSES.values()) - set(d["positives"])),
                       "clip_to_frame": True, "selection_fraction": d["selection_fraction"],
                       "selection_by": "city sequence", "seed": d["seed"]},
            "counts": counts,
            "calibration_images": len(calib),
            "images_placed": dict(link.used), "bytes_copied": link.bytes_copied,
            "moved_aside": None,
            "started": started, "finished": manifest.now(),
            "wall_s": round(time.perf_counter() - t0, 3),
        }
        files.atomic_write_json(build.path / "manifest.json", result)
    record_moved_aside(result, build, out_dir, root, old)
    report(result, out_dir, link, root)
    return result


def check_images_present(records: dict, images: Path, raw: Path, root: Path) -> None:
    absent = [images / r["split"] / r["city"] / r["name"] for s in SPLITS for r in records[s]
              if not (images / r["split"] / r["city"] / r["name"]).exists()]
    if absent:
        raise UserError(f"{len(absent)} image(s) listed in the annotations are absent, e.g. "
                        f"{paths.rel(absent[0], root)}; extract all of leftImg8bit_trainvaltest.zip "
                        f"into {paths.rel(raw, root)}/ (or delete a partial leftImg8bit/ so it is re-extracted)")


def calibration_list(build: Path, final: Path, n: int, seed: int, root: Path, counts: dict) -> list[str]:
    """n train images drawn with the seed, each decoded in full: one that does not decode is taken
    out of the train split (counted as unreadable) and replaced by the next draw, so the RKNN stage
    never meets it and `make dataset FORCE=1` does not draw it again."""
    folder = build / "train" / "images"
    names = sorted(p.name for p in folder.iterdir())
    rng = random.Random(seed)
    picked = rng.sample(names, min(n, len(names)))
    drawn = set(picked)
    rest = [x for x in names if x not in drawn]
    rng.shuffle(rest)
    good, queue = [], picked
    while queue and len(good) < n:
        bad = undecodable([folder / x for x in queue], "calib px")
        for x in queue:
            if folder / x in bad:
                (folder / x).unlink()
                label = build / "train" / "labels" / (Path(x).stem + ".txt")
                boxes = len(label.read_text().splitlines())
                counts["boxes"] -= boxes
                counts["background"] -= boxes == 0
                label.unlink()
                counts["images"] -= 1
                counts["unreadable"] += 1
                counts["unreadable_files"].append(paths.rel(final / "train" / "images" / x, root))
            else:
                good.append(x)
        queue, rest = rest[:n - len(good)], rest[n - len(good):]
    return [paths.rel(final / "train" / "images" / name, root) for name in sorted(good)]


def report(result: dict, out_dir: Path, link: Linker, root: Path) -> None:
    counts = result["counts"]
    for split, c in counts.items():
        if c["unreadable"]:
            warn(STAGE, f"{split}: skipped {c['unreadable']} unreadable PNG(s), e.g. "
                        f"{c['unreadable_files'][0]}; re-extract or re-download them")
    info(STAGE, link.summary())
    rows = [[s, c["images"], c["boxes"], c["clipped"], c["degenerate"], c["background"], c["unreadable"]]
            for s, c in counts.items()]
    print(table(["split", "images", "person boxes", "clipped", "degenerate", "background", "unreadable"],
                rows, title=f"\n{paths.rel(out_dir, root)}  (positives: {', '.join(result['policy']['positives'])})"))
    print(f"wall time {result['wall_s']:.2f} s")
