"""Atomic writes, moving aside instead of deleting, and checksums that are not recomputed for nothing."""
import hashlib
import json
import os
import re
import shutil
import socket
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
    tmp = temp_name(path.with_suffix(""), path.suffix)
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


def read_json(path: Path) -> dict | None:
    """A JSON object the project wrote (a manifest, a record), or None when there is none to trust:
    absent, damaged, or not an object (every such file is one); its writer then writes it again. A
    file a stage must have is read with log.read_json_object instead, which says what is wrong."""
    try:
        data = json.loads(Path(path).read_text())
    except (FileNotFoundError, json.JSONDecodeError, UnicodeDecodeError):
        return None
    return data if isinstance(data, dict) else None


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
        self.replaced = False                 # an older `final` built from the same inputs was replaced


@contextmanager
def build_dir(final: Path, same_inputs: bool = False):
    """Yield a Build whose .path is a temporary folder beside `final`; on success rename the new one
    into place. An old `final` is moved aside, unless `same_inputs` says it was built from the very
    same inputs (a forced rebuild): then it is replaced, and no copy of identical output piles up.

    On failure the temporary folder is removed (it is ours alone), so nothing half-built is ever left
    where a later stage would read it.
    """
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    build = Build(temp_name(final))
    shutil.rmtree(build.path, ignore_errors=True)
    build.path.mkdir()
    try:
        yield build
    except BaseException:
        shutil.rmtree(build.path, ignore_errors=True)
        raise
    if final.exists() and same_inputs:
        replace_dir(build.path, final)
        build.replaced = True
        return
    if final.exists():
        build.moved_aside = move_aside(final)
    os.replace(build.path, final)


def replace_dir(new: Path, final: Path) -> None:
    """Swap a finished folder into place over an old one: two renames, then the old one is removed.
    A kill between them leaves the old one under a temporary name, which the next start cleans up."""
    old = final.with_name(f".{final.name}.replaced-{HOST}-{os.getpid()}")
    shutil.rmtree(old, ignore_errors=True)
    os.replace(final, old)
    os.replace(new, final)
    shutil.rmtree(old, ignore_errors=True)


# Every temporary name carries its writer's host and pid: .<name>.tmp-<host>-<pid>[.suffix] (temp_name:
# atomic_path, build_dir, the zip extractor, the convert stage's work folders) and
# .<name>.replaced-<host>-<pid> (replace_dir).
TEMP_RE = re.compile(r"^\..+\.(tmp|replaced)-(?:([A-Za-z0-9-]+)-)?(\d+)(\.[^/]*)?$")
# Who writes: this host and process. A project folder on shared storage is written from several
# machines (a sweep on a cluster), where a pid means something on its own host only.
# In a container PIPELINE_HOST is the machine's own name (the runner passes it), not the container's.
HOST = re.sub(r"[^A-Za-z0-9-]", "-", os.environ.get("PIPELINE_HOST") or socket.gethostname()) or "host"


def final_name(path) -> Path:
    """The output a temporary path stands for: .demo.tmp-host-1.onnx -> demo.onnx, and a file inside a
    temporary build folder -> that folder's final name. Messages name what the user knows."""
    parts = Path(path).parts
    for i, part in enumerate(parts):
        m = TEMP_RE.match(part)
        if m:
            return Path(*parts[:i], part[1:m.start(1) - 1] + (m.group(4) or ""))
    return Path(path)


def temp_name(final: Path, suffix: str = "") -> Path:
    """.<name>.tmp-<host>-<pid><suffix> beside `final`: hidden, and removable once its writer is gone."""
    return final.with_name(f".{final.name}.tmp-{HOST}-{os.getpid()}{suffix}")


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process: alive
        return True
    return True


def clean_stale_temps(*folders: Path, depth: int = 2) -> list[Path]:
    """Remove the temporary files and folders that killed runs left in `folders` (and their
    subfolders, `depth` levels down): only those whose writer's pid is gone, so a run going on
    beside this one keeps its own, and only this host's (another host's pids cannot be checked from
    here). Returns what was removed."""
    removed = []
    for folder in folders:
        folder = Path(folder)
        if not folder.is_dir():
            continue
        for entry in list(folder.iterdir()):
            m = TEMP_RE.match(entry.name)
            mine = m and m.group(2) in (None, HOST)  # no host: a name from before hosts were recorded
            if mine and int(m.group(3)) != os.getpid() and not pid_alive(int(m.group(3))):
                if entry.is_dir() and not entry.is_symlink():
                    shutil.rmtree(entry, ignore_errors=True)
                else:
                    entry.unlink(missing_ok=True)
                removed.append(entry)
            elif depth > 1 and entry.is_dir() and not entry.is_symlink() and not m:
                removed += clean_stale_temps(entry, depth=depth - 1)
    return removed


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
