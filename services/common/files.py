"""Atomic writes, moving aside instead of deleting, and checksums that are not recomputed for nothing."""
import hashlib
import json
import os
import shutil
import time
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def atomic_path(path: Path):
    """Yield a temporary path beside `path` for a writer (ours, or a library's such as onnx.save or
    rknn.export_rknn); rename it into place when the block succeeds, remove it when it fails.
    Readers see the old file or the new one, never half of it. The temporary name keeps the
    suffix, because some writers choose the format by it (cv2.imwrite) or append it (np.savez)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.tmp-{os.getpid()}{path.suffix}")
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def atomic_write_text(path: Path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def atomic_write_json(path: Path, obj) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False) + "\n")


def read_json(path: Path):
    try:
        return json.loads(Path(path).read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None


def move_aside(path: Path) -> Path:
    """Rename `path` to `<name>.old-<UTC time>` beside it. Nothing a run produced is deleted."""
    path = Path(path)
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    target = path.with_name(f"{path.name}.old-{stamp}")
    n = 1
    while target.exists():
        n += 1
        target = path.with_name(f"{path.name}.old-{stamp}-{n}")
    os.replace(path, target)
    return target


class Build:
    def __init__(self, path: Path):
        self.path = path
        self.moved_aside: Path | None = None  # where an older `final` went, if there was one


@contextmanager
def build_dir(final: Path):
    """Yield a Build whose .path is a temporary folder beside `final`; on success move any old `final`
    aside and rename the new one into place.

    On failure the temporary folder is removed (it is ours alone), so nothing half-built is ever left
    where a later stage would read it.
    """
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    build = Build(final.with_name(f".{final.name}.tmp-{os.getpid()}"))
    shutil.rmtree(build.path, ignore_errors=True)
    build.path.mkdir()
    try:
        yield build
    except BaseException:
        shutil.rmtree(build.path, ignore_errors=True)
        raise
    if final.exists():
        build.moved_aside = move_aside(final)
    os.replace(build.path, final)


def file_digest(path: Path, algorithm: str = "sha256", chunk: int = 1 << 20) -> str:
    """Hex digest of a file read in chunks (a download of gigabytes never sits in memory whole);
    `algorithm` is any name hashlib.new knows: sha256, md5 (the checksum some publishers give), ..."""
    h = hashlib.new(algorithm)
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def sha256_file(path: Path) -> str:
    """The checksum the manifests record: file_digest(path, "sha256")."""
    return file_digest(path)


def sha256_cached(path: Path, cache_file: Path) -> str:
    """sha256 of a big download (the 11 GB Cityscapes zip), recomputed only when its size or mtime change."""
    path = Path(path)
    st = path.stat()
    key = str(path.resolve())
    cache = read_json(cache_file) or {}
    hit = cache.get(key)
    if hit and hit["size"] == st.st_size and hit["mtime_ns"] == st.st_mtime_ns:
        return hit["sha256"]
    digest = sha256_file(path)
    cache[key] = {"size": st.st_size, "mtime_ns": st.st_mtime_ns, "sha256": digest}
    atomic_write_json(cache_file, cache)
    return digest
