"""The one rule every stage skips by: its outputs are up to date when the manifest beside them is
complete (it is written last), records the same fingerprint (everything the outputs depend on), and
each output is still the bytes the manifest recorded. FORCE=1 (FRESH=1 for training) does the work
anyway.

A file's record is its size, modification time and sha256: a size that differs is a truncation;
an unchanged size and time are taken as the same bytes (a write changes the time); a changed time
is settled by the sha256, so touching a file costs one checksum and no rebuild.

Outputs built from other inputs or settings (a fingerprint that differs) are moved aside before the
stage builds anew (`<name>.old-<UTC time>`, files.move_aside), with a line naming what differed: a
thesis's earlier numbers are never overwritten by a changed setting. A rebuild of the same inputs
(FORCE=1) or of outputs that are damaged replaces them: they are the same thing, or no thing.
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


def changed_keys(old, new, prefix: str = "") -> list[str]:
    """The dotted keys whose values differ between two fingerprints (`export.opset`, `weights_sha256`)."""
    if not (isinstance(old, dict) and isinstance(new, dict)):
        return [prefix or "(the whole fingerprint)"] if old != new else []
    found = []
    for k in sorted(set(old) | set(new), key=str):
        found += changed_keys(old.get(k), new.get(k), f"{prefix}.{k}" if prefix else str(k))
    return found


def set_aside(stage: str, manifest_path: Path, old: dict, root: Path, why: list[str],
              self_kept: tuple = ()) -> list[Path]:
    """Move the manifest and every output it records aside (an output that is itself a manifest takes
    its own outputs along), and say so in one line naming what differed. Outputs under a folder of
    `self_kept` are left to their writer, which moves its whole folder aside itself (the board bundle)."""
    moved = []

    def aside(p: Path) -> None:
        if any(p.is_relative_to(folder) for folder in self_kept):
            return
        record = files.read_json(p) if p.suffix == ".json" and p.is_file() else None
        for name in (record or {}).get("outputs") or {}:
            aside(root / name)
        if p.is_file():
            moved.append(files.move_aside(p))

    for name in old.get("outputs") or {}:
        aside(root / name)
    if manifest_path.is_file():
        moved.append(files.move_aside(manifest_path))
    if moved:
        keys = ", ".join(why[:4]) + (", ..." if len(why) > 4 else "")
        info(stage, f"{paths.rel(manifest_path, root)} and its outputs were built from another {keys}: moved "
                    f"{len(moved)} file(s) aside as <name>.old-{moved[0].name.rpartition('.old-')[2]}, nothing deleted")
    return moved


def check(stage: str, manifest_path: Path, fingerprint: dict, root: Path, force: bool, skip_line: str,
          self_kept: tuple = (), aside: bool = True):
    """The manifest when the outputs are up to date (then `skip_line` is said), else None; outputs that
    differ from their record are named before the stage rebuilds them, outputs built from other
    inputs or settings are moved aside (aside=False: the caller, whose output this is, decided that)."""
    old = files.read_json(manifest_path)
    if aside and old and old.get("fingerprint") is not None and old["fingerprint"] != fingerprint:
        set_aside(stage, manifest_path, old, root, changed_keys(old["fingerprint"], fingerprint), self_kept)
        return None
    if force or not old or old.get("fingerprint") != fingerprint:
        return None
    differ = differences(old.get("outputs"), root)
    if differ:
        info(stage, f"rebuilding: {'; '.join(differ[:3])}{'; ...' if len(differ) > 3 else ''}")
        return None
    info(stage, skip_line)
    return old
