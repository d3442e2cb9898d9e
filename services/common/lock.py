"""One writer at a time: a lock per experiment (artifacts/<exp>/.lock) and per dataset folder.

    with lock.held(folder, "fit"):            # a second writer is refused at once (UserError, exit 2)
    with lock.held(folder, "dataset", wait=True)   # ... or waits, for a folder experiments share

Mechanism: flock(2) on a small file in the folder. The kernel owns the lock, so a run killed by any
signal (or a machine that dies) releases it with no clean-up of ours: a lock file left by a killed
run is an unlocked file, and the next run simply takes it (and says whose it was). On NFS, Linux
implements flock with the server's byte-range locks, which work across hosts; the server frees a
dead client's locks when its lease expires (NFSv4: about 90 s). A file system without locks at all
(some FUSE mounts) gets one warning and runs unguarded rather than not at all.

The file holds who holds it (stage, pid, host, since, container), only to say so in the refusal;
the kernel lock is the truth. The holder removes the file when it is done, so a finished run leaves
nothing behind; a run that opened the old file just before the removal sees a different inode (or
none) at the path once it has the lock, and starts over.

Read-only work (report, predict, TensorBoard) takes no lock: it never waits and never blocks.
"""
import errno
import fcntl
import json
import os
import time
from contextlib import contextmanager
from pathlib import Path

from . import files, manifest, paths
from .log import UserError, info, warn

LOCK_NAME = ".lock"
NO_LOCKS = {errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL}


@contextmanager
def held(folder: Path, stage: str, wait: bool = False):
    """Hold `folder`'s lock for the block. Busy: refuse with the holder's line, or (wait=True) say
    whom we wait for and wait. A folder that did not exist and is empty afterwards is removed."""
    folder = Path(folder)
    created = [d for d in (folder, *folder.parents) if not d.exists()]  # deepest first
    folder.mkdir(parents=True, exist_ok=True)
    path, fd = folder / LOCK_NAME, None
    try:
        fd, previous = _acquire(path, stage, wait)
        if previous:
            info(stage, f"took over {paths.rel(path)} from a run that is gone ({describe(previous)})")
        if fd is not None:
            _write_holder(fd, stage)
        yield
    finally:
        if fd is not None:
            path.unlink(missing_ok=True)  # while still holding it: see the module's note
            os.close(fd)
        for d in created:  # a refused or failed run leaves no empty folders of ours
            _remove_if_empty(d)


def _acquire(path: Path, stage: str, wait: bool):
    """(fd holding the lock, the holder record a killed run left in it or None)."""
    told = False
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _read_holder(fd, patience=2.0)
            os.close(fd)
            if not wait:
                raise UserError(busy_line(path.parent, holder))
            if not told:
                info(stage, f"waiting for {paths.rel(path.parent)}: {describe(holder)} is writing it")
                told = True
            time.sleep(1.0)
            continue
        except OSError as e:
            os.close(fd)
            if e.errno not in NO_LOCKS:
                raise
            warn(stage, f"the file system under {paths.rel(path.parent)} has no locks ({e.strerror}); this run is "
                        f"not guarded against another run of the same experiment")
            return None, None
        if _same_file(fd, path):
            return fd, _read_holder(fd, patience=0)  # what a killed holder left, if anything
        os.close(fd)  # the holder removed it between our open and our lock: take the new one


def _same_file(fd: int, path: Path) -> bool:
    try:
        return os.stat(path).st_ino == os.fstat(fd).st_ino
    except FileNotFoundError:
        return False


def _write_holder(fd: int, stage: str) -> None:
    record = {"stage": stage, "pid": os.getpid(), "host": files.HOST, "since": manifest.now(),
              "container": os.environ.get("PIPELINE_CONTAINER", "")}
    os.ftruncate(fd, 0)
    os.pwrite(fd, (json.dumps(record) + "\n").encode(), 0)


def _read_holder(fd: int, patience: float) -> dict | None:
    """The holder's record; a holder that has the lock but has not written it yet gets `patience` seconds."""
    deadline = time.monotonic() + patience
    while True:
        try:
            record = json.loads(os.pread(fd, 4096, 0) or b"null")
        except ValueError:
            record = None
        if isinstance(record, dict) or time.monotonic() >= deadline:
            return record if isinstance(record, dict) else None
        time.sleep(0.05)


def describe(holder: dict | None) -> str:
    if not holder:
        return "a run that has not said who it is"
    where = holder.get("host")
    if holder.get("container"):
        where = f"container {holder['container']} on {where}"
    return f"{holder.get('stage', '?')}, pid {holder.get('pid', '?')} on {where}, since {holder.get('since', '?')}"


def busy_line(folder: Path, holder: dict | None) -> str:
    if holder and holder.get("container"):
        stop = f"`docker stop {holder['container']}` on {holder.get('host')}"
    elif holder:
        stop = f"`kill {holder.get('pid')}` on {holder.get('host')}"
    else:
        stop = "stop the other run"
    return (f"{paths.rel(folder)} is in use by another run ({describe(holder)}); wait for it to finish and run "
            f"again, or stop it ({stop}); the lock frees itself when that run ends, however it ends")


def _remove_if_empty(folder: Path) -> None:
    try:
        folder.rmdir()
    except OSError:  # not empty: the stage wrote there
        pass
