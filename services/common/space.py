"""Room to write, checked before the work: every folder a stage writes is writable, and its disk has
the space the stage will need (an estimate from what is on disk already: the raw images, best.pt,
the ONNX model, ...). A full disk met anyway (another process filled it) is one line naming the
output, the free space and the estimate, and the run's new, manifest-less outputs are removed.

Estimates err on the large side; where a stage replaces its outputs one file at a time, the need
is its largest file (the old one is freed as the new one is renamed into place)."""
import errno
import os
import zipfile
from contextlib import contextmanager
from pathlib import Path

from . import files, paths
from .layout import Experiment
from .log import UserError

MB = 1 << 20
FULL_ERRNOS = {errno.ENOSPC, errno.EDQUOT}
# Stripped checkpoint sizes (fp16 weights) of the stock YOLO scales, for a model given as a .yaml.
SCALE_MB = {"n": 5.5, "s": 19, "m": 40, "l": 51, "x": 114}
DEMO_RAW_BYTES = 90 * MB      # datasets/demo/raw as the demo generator writes it (78 MB measured)
PROXY_FRAME_BYTES = 3 * MB    # one 2048x1024 proxy PNG, at most
PER_IMAGE_BYTES = 8 << 10     # a label file and a link (or its directory entry) per image


# ------------------------------------------------------------------------------------ writable
def check_writable(stage: str, folders) -> None:
    """Each folder (or, where it does not exist yet, the folder that would hold it) must take a new
    file: tried for real, so permissions, `chattr +i`, a read-only mount and a disk with no free
    inodes all answer, before the first byte of work."""
    for folder in folders:
        folder = Path(folder)
        existing = next(p for p in (folder, *folder.parents) if p.exists())
        probe = files.temp_name(existing / "write-probe")
        try:
            os.close(os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
            os.unlink(probe)
        except OSError as e:
            raise UserError(unwritable_line(stage, existing, e)) from None


def unwritable_line(stage: str, folder: Path, e: OSError) -> str:
    where = f"{paths.rel(folder)}/"
    if e.errno in FULL_ERRNOS:
        return f"{where}: {e.strerror} (no room for even one more file); free some space there, then run it again"
    if e.errno == errno.EROFS:
        fix = "it is on a read-only mount: remount it read-write, or set PIPELINE_ROOT to a writable project folder"
    elif e.errno == errno.EPERM:
        fix = f"it is immutable or its mount forbids writes: `chattr -i {paths.rel(folder)}` (as root)"
    else:
        fix = f"give this user (uid {os.getuid()}) write access to it (chown/chmod)"
    return f"{where}: {e.strerror}; the {stage} stage writes there: {fix}, then run it again"


# ------------------------------------------------------------------------------------ free space
def free(folder: Path) -> int:
    """Bytes free to this user on the disk that holds `folder` (or would hold it)."""
    existing = next(p for p in (Path(folder), *Path(folder).parents) if p.exists())
    st = os.statvfs(existing)
    return st.f_bavail * st.f_frsize


def human(n: float) -> str:
    for unit in ("bytes", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "bytes" else f"{n:.1f} {unit}"
        n /= 1024


def require(stage: str, need: tuple[Path, int, str]) -> None:
    """Refuse before the work when the disk under the folder has less free space than the estimate."""
    folder, size, what = need
    have = free(folder)
    if size and have < size:
        raise UserError(f"{paths.rel(folder)}/: {human(have)} free, but the {stage} stage needs about {human(size)} "
                        f"there ({what}); free some space on that disk (or set PIPELINE_ROOT to a project folder "
                        f"on a larger one), then run it again")


@contextmanager
def disk_full_explained(stage: str, cfg: dict, root: Path = paths.ROOT):
    """A full disk met during the work: one line naming the output, what is free and what the stage
    needs. The files this run added to its own folders of artifacts/<exp> are removed, so none is
    left looking finished without the manifest the stage could not write (report/ and predict/,
    written by unlocked readers meanwhile, are not its own). Files it replaced keep the old
    manifest, which no longer matches them: the next run sees that and writes them again."""
    art = paths.artifacts_dir(cfg["experiment"], root)
    own = [art / sub for sub in paths.ARTIFACTS_WRITTEN.get(stage, [])]
    before = {p for folder in own for p in _entries(folder)}
    try:
        yield
    except OSError as e:
        if e.errno not in FULL_ERRNOS:
            raise
        removed = [r for folder in own for r in _remove_new(folder, before)]
        raise UserError(disk_full_line(stage, cfg, e, removed, root)) from None


def disk_full_line(stage: str, cfg: dict, e: OSError, removed: list, root: Path) -> str:
    folder, size, what = estimate(stage, cfg, root)
    target = files.final_name(e.filename) if e.filename else folder
    have = free(target)
    room = f"{human(have)} free"
    if e.errno == errno.ENOSPC and have >= size:  # bytes enough, yet full: the partial output held the inodes
        room += ", but no more files fit: the file system ran out of inodes (`df -i` shows them)"
    line = (f"{paths.rel(target)}: {e.strerror} ({room}); the {stage} stage needs about {human(size)} in "
            f"{paths.rel(folder)}/ ({what}); free some space on that disk (or set PIPELINE_ROOT to a project "
            f"folder on a larger one), then run it again")
    if removed:
        line += f"; removed the {len(removed)} output(s) this run had written: {', '.join(removed[:3])}"
    return line


def _entries(folder: Path) -> set:
    return {folder, *folder.rglob("*")} if folder.is_dir() else set()


def _remove_new(folder: Path, before: set) -> list[str]:
    """The files this run added to `folder` (its logs stay: they say what happened), and the
    folders it added that are empty then."""
    added = _entries(folder) - before
    new = sorted(p for p in added if p.is_file() and p.suffix != ".log")
    for p in new:
        p.unlink(missing_ok=True)
    for d in sorted((p for p in added if p.is_dir()), key=lambda d: -len(d.parts)):
        if not any(d.iterdir()):
            d.rmdir()
    return [paths.rel(p) for p in new]


# ------------------------------------------------------------------------------------ estimates
def estimate(stage: str, cfg: dict, root: Path = paths.ROOT) -> tuple[Path, int, str]:
    """(folder, bytes, what for) the stage will write, from what is on disk now."""
    return ESTIMATES[stage](cfg, Path(root))


def dataset_need(cfg: dict, root: Path) -> tuple[Path, int, str]:
    d = cfg["dataset"]
    raw = paths.raw_dir(d["name"], root)
    images, count, extra, why = _raw_images(d, raw)
    copy = d["link"] == "copy"
    size = extra + (images if copy else count * PER_IMAGE_BYTES) + 5 * MB
    why += [f"{count} images {'copied' if copy else 'linked, with their labels'}"]
    if "coco_person" in cfg["evaluate"]["sets"]:
        size += 5000 * PER_IMAGE_BYTES
        why.append("COCO val2017 persons, linked")
    return paths.dataset_dir(d["name"], root), size, "; ".join(why)


def _raw_images(d: dict, raw: Path) -> tuple[int, int, int, list]:
    """(image bytes, image count, bytes written before the conversion, why): the raw images on disk,
    in the Cityscapes zip, or still to be generated."""
    pngs = [p.stat().st_size for p in (raw / "leftImg8bit").rglob("*.png")] if (raw / "leftImg8bit").is_dir() else []
    if pngs:
        return sum(pngs), len(pngs), 0, []
    if d["generate_demo"]:
        return DEMO_RAW_BYTES, 300, DEMO_RAW_BYTES, ["the generated demo download"]
    if d["generate_proxy"]:
        n = d["proxy_train_images"] + d["proxy_val_images"]
        return n * PROXY_FRAME_BYTES, n, n * PROXY_FRAME_BYTES, ["the generated proxy download"]
    zip_path = raw / "leftImg8bit_trainvaltest.zip"
    if zip_path.is_file():
        try:
            with zipfile.ZipFile(zip_path) as z:
                sizes = [i.file_size for i in z.infolist() if i.filename.endswith(".png")]
            return sum(sizes), len(sizes), sum(sizes), [f"{zip_path.name} extracted"]
        except (OSError, zipfile.BadZipFile):
            pass
    return 0, 0, 0, []


def fit_need(cfg: dict, root: Path) -> tuple[Path, int, str]:
    """last.pt and best.pt with the optimizer's state (about 3x the stripped weights each), their
    stripped copies in artifacts/, and ultralytics' plots and logs."""
    model = cfg["train"]["model"]
    local = next((p for p in (Path(model), root / model, root / "datasets" / "weights" / model) if p.is_file()), None)
    if local is not None and local.suffix == ".pt":
        stripped = local.stat().st_size
    else:
        scale = Path(model).stem.lower().rstrip("-_")[-1:]
        stripped = int(SCALE_MB.get(scale, SCALE_MB["m"]) * MB)
    return paths.runs_dir(cfg["experiment"], root), 8 * stripped + 20 * MB, "checkpoints, their copies and plots"


def export_need(cfg: dict, root: Path) -> tuple[Path, int, str]:
    """Two ONNX models, each about twice best.pt (fp32 weights where the checkpoint keeps fp16)."""
    exp = Experiment.of(cfg, root)
    one = 2 * exp.best.stat().st_size + MB if exp.best.is_file() else 0
    size = sum(one for p in (exp.onnx, exp.rknn_head_onnx) if not p.is_file()) or one
    return exp.models, size, f"two ONNX models of about {human(one)} each"


def evaluate_need(cfg: dict, root: Path) -> tuple[Path, int, str]:
    """The detections files: up to max_det boxes of about 100 bytes per val image and format."""
    val = paths.yolo_dir(cfg["dataset"]["name"], root) / "val" / "images"
    n = sum(1 for _ in val.iterdir()) if val.is_dir() else 500
    size = n * cfg["evaluate"]["max_det"] * 100 * 2 + MB
    return paths.artifacts_dir(cfg["experiment"], root) / "metrics", size, f"detections of {n} images per format"


def convert_need(cfg: dict, root: Path) -> tuple[Path, int, str]:
    """The .rknn model (at most the RKNN-head ONNX's size), the letterboxed calibration images
    (cached by size) and the quantization analysis' per-layer dumps (removed after, but written)."""
    exp, c = Experiment.of(cfg, root), cfg["convert"]
    art, onnx, built = exp.artifacts, exp.rknn_head_onnx, exp.rknn(c)
    imgsz = cfg["export"]["imgsz"] or cfg["train"]["imgsz"]
    h, w = (imgsz, imgsz) if isinstance(imgsz, int) else imgsz
    size = onnx.stat().st_size if onnx.is_file() else 0
    if built.is_file():  # most likely up to date; a rebuild replaces it (and meets a full disk in our words)
        return art, built.stat().st_size + MB, "the RKNN model, replaced"
    if c["dtype"] == "int8":
        e = cfg["evaluate"]  # the NPU sees tiles when the model is evaluated on tiles: so does the quantizer
        if not exp.calibration_copies((h, w), e["tiles"], e["tile_overlap"]).is_dir():
            size += cfg["dataset"]["calib_images"] * h * w * 3 // 2
        size += int(c["analysis_images"] * 300 * MB * h * w / (640 * 640))
    return art, size + MB, "the RKNN model, calibration images and the quantization analysis"


ESTIMATES = {"dataset": dataset_need, "fit": fit_need, "export": export_need, "evaluate": evaluate_need,
             "convert": convert_need}
