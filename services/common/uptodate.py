"""The one rule every stage skips by: its outputs are up to date when the manifest beside them is
complete (it is written last), records the same fingerprint (everything the outputs depend on), and
each output is still the bytes the manifest recorded. FORCE=1 (FRESH=1 for training) does the work
anyway.

A file's record is its size, modification time and sha256: a size that differs is a truncation;
an unchanged size and time are taken as the same bytes (a write changes the time); a changed time
is settled by the sha256, so touching a file costs one checksum and no rebuild.
"""
from pathlib import Path

from . import files, paths
from .log import info


def record(outputs: list[Path], root: Path) -> dict:
    """What a manifest keeps of its outputs, keyed by their paths relative to the project."""
    out = {}
    for p in outputs:
        st = p.stat()
        out[paths.rel(p, root)] = {"bytes": st.st_size, "mtime_ns": st.st_mtime_ns, "sha256": files.sha256_file(p)}
    return out


def differences(recorded: dict | None, root: Path) -> list[str]:
    """How the outputs on disk differ from the manifest's record, one phrase each; [] when none do."""
    if not recorded:
        return ["the manifest records no output checksums"]
    found = []
    for name, want in recorded.items():
        p = root / name
        if not p.is_file():
            found.append(f"{name} is missing")
            continue
        st = p.stat()
        if st.st_size != want["bytes"]:
            found.append(f"{name} has {st.st_size} bytes, not the {want['bytes']} recorded")
        elif st.st_mtime_ns != want["mtime_ns"] and files.sha256_file(p) != want["sha256"]:
            found.append(f"{name} was overwritten (its sha256 is not the one recorded)")
    return found


def check(stage: str, manifest_path: Path, fingerprint: dict, root: Path, force: bool, skip_line: str):
    """The manifest when the outputs are up to date (then `skip_line` is said), else None; outputs that
    differ from their record are named before the stage rebuilds them."""
    old = files.read_json(manifest_path)
    if force or not old or old.get("fingerprint") != fingerprint:
        return None
    differ = differences(old.get("outputs"), root)
    if differ:
        info(stage, f"rebuilding: {'; '.join(differ[:3])}{'; ...' if len(differ) > 3 else ''}")
        return None
    info(stage, skip_line)
    return old
