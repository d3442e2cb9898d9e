"""Fetching what is public, and saying exactly what is not.

    fetch(source, dest, partial_dir)     one file: resumed, verified, renamed into place
    extract(zip_path, prefix, into)      the members of a zip under prefix, into raw/ atomically
    give_up(lines)                       what a user must fetch by hand, one error line each

A download goes to datasets/<name>/.downloads/<file>.part first. An interrupted transfer leaves the
.part there and the next attempt (in the same run, or the next `make dataset`) asks the server for
the rest only (HTTP Range). Only a complete file whose size and checksum match the pinned ones is
renamed into raw/; one that does not match is discarded, so raw/ never holds a bad download.

PIPELINE_OFFLINE=1 (Make: OFFLINE=1) means no network at all: missing files are listed, not fetched.
"""
import http.client
import os
import shutil
import sys
import time
import urllib.error
import urllib.request
import zipfile
from dataclasses import dataclass
from pathlib import Path

from tqdm import tqdm

from services.common import files, paths
from services.common.log import UserError, info

STAGE = "dataset"
CHUNK = 1 << 20
TIMEOUT_S = 60       # a server silent this long counts as an interrupted transfer
ATTEMPTS = 4         # transfers per file in one run; each one resumes where the last stopped


@dataclass(frozen=True)
class Source:
    """One public file: where it comes from and what it must be."""
    what: str                 # for people: "COCO val2017 images"
    url: str
    size: int | None = None   # bytes; checked before and after the transfer
    md5: str | None = None    # the checksum the publisher gives, where it gives one
    sha256: str | None = None

    @property
    def file(self) -> str:
        return self.url.rstrip("/").rsplit("/", 1)[-1]

    def describe(self) -> str:
        return f"{self.what} ({self.file}{f', {_size(self.size)}' if self.size else ''})"


offline = paths.offline


def give_up(problems: list[str]) -> None:
    """Stop with one error line per file the stage could not get (each says what, where from and
    where to put it), so a user sees everything to fetch by hand at once, not one file per run."""
    for line in problems[:-1]:
        print(f"{STAGE}: error: {line}", file=sys.stderr, flush=True)
    raise UserError(problems[-1])  # the last line, printed the same way by log.user_errors


def by_hand(source: Source, dest: Path, why: str, or_else: str = "") -> str:
    """The one line for a file the user must fetch: what, why it was not fetched, from where, to where."""
    return (f"missing {source.describe()}: {why}; download {source.url} and put it at "
            f"{paths.rel(dest)}{f' ({or_else})' if or_else else ''}")


# ---------------------------------------------------------------------------------------- fetch
def fetch(source: Source, dest: Path, partial_dir: Path) -> Path:
    """Download `source` to `dest`, complete and verified, or raise UserError and leave nothing in
    dest's folder. An interrupted transfer is resumed (up to ATTEMPTS times here; its .part stays in
    `partial_dir` for the next run if they all fail)."""
    dest, partial_dir = Path(dest), Path(partial_dir)
    part = partial_dir / f"{dest.name}.part"
    if source.size is not None and part.is_file() and part.stat().st_size > source.size:
        part.unlink()  # our own leftover, longer than the file can be: start over
    if part.is_file():
        info(STAGE, f"resuming {source.file} at {_size(part.stat().st_size)}")
    else:
        info(STAGE, f"downloading {source.describe()} from {source.url}")
    try:
        _attempts(source, part, dest)
        verify(source, part, dest)
        dest.parent.mkdir(parents=True, exist_ok=True)
        os.replace(part, dest)  # same file system (datasets/), so readers see no file or the whole one
    finally:
        _remove_if_empty(partial_dir)  # a .part worth resuming keeps it
    return dest


def _attempts(source: Source, part: Path, dest: Path) -> None:
    for attempt in range(1, ATTEMPTS + 1):
        try:
            if _transfer(source, part, dest):
                return
        except (OSError, http.client.HTTPException) as e:
            have = part.stat().st_size if part.is_file() else 0
            if _unreachable(e):  # no answer, or a refusal: retrying now would not help
                kept = f" ({_size(have)} kept in {paths.rel(part)}; the next run resumes it)" if have else ""
                raise UserError(by_hand(source, dest, _reason(e) + kept))
            # the connection broke or the server went silent: resume from what arrived
            if attempt == ATTEMPTS:
                raise UserError(f"the download of {source.file} broke off {ATTEMPTS} times ({_reason(e)}), "
                                f"{_size(have)} are kept in {paths.rel(part)}; run `make dataset` again to "
                                f"resume, or download {source.url} yourself and put it at {paths.rel(dest)}")
            info(STAGE, f"{source.file}: transfer interrupted at {_size(have)} ({_reason(e)}); resuming")
            time.sleep(0.5 * 2 ** (attempt - 1))


def _transfer(source: Source, part: Path, dest: Path) -> bool:
    """One HTTP transfer appended to `part`; True when the server has sent everything."""
    have = part.stat().st_size if part.is_file() else 0
    if source.size is not None and have == source.size:
        return True
    request = urllib.request.Request(source.url, headers={"User-Agent": "citypersons-pipeline"})
    if have:
        request.add_header("Range", f"bytes={have}-")
    try:
        response = urllib.request.urlopen(request, timeout=TIMEOUT_S)
    except urllib.error.HTTPError as e:
        if e.code == 416 and have:  # nothing after `have`: the .part is already whole, verify it
            return True
        raise
    with response:
        part.parent.mkdir(parents=True, exist_ok=True)
        if have and response.status != 206:
            have = 0  # the server ignored the Range header and sends the whole file: start over
        total = _total(response, have)
        if source.size is not None and total is not None and total != source.size:
            raise UserError(f"{source.url} offers {total} bytes, but the official {source.file} has "
                            f"{source.size}; nothing was downloaded; check that the address serves the official "
                            f"file, or download it yourself and put it at {paths.rel(dest)}")
        with open(part, "ab" if have else "wb") as f, \
                tqdm(total=source.size or total, initial=have, unit="B", unit_scale=True, unit_divisor=1024,
                     desc=source.file, mininterval=0.5, leave=False) as bar:
            while block := response.read(CHUNK):  # raises IncompleteRead if the server stops early
                f.write(block)
                bar.update(len(block))
            f.flush()
            os.fsync(f.fileno())
    got = part.stat().st_size
    if source.size is not None and got < source.size:
        raise http.client.IncompleteRead(b"", source.size - got)  # closed early without a length
    return True


def _total(response, have: int):
    """The full file size the server announces (Content-Range for a resumed transfer)."""
    content_range = response.headers.get("Content-Range", "")
    if "/" in content_range and content_range.rsplit("/", 1)[1].isdigit():
        return int(content_range.rsplit("/", 1)[1])
    length = response.headers.get("Content-Length")
    return have + int(length) if length and length.isdigit() else None


def verify(source: Source, part: Path, dest: Path) -> None:
    """Size and checksum of a finished transfer; a mismatch discards it (it is our own .part)."""
    got = part.stat().st_size
    problem = None
    if source.size is not None and got != source.size:
        problem = f"has {got} bytes, expected {source.size}"
    else:
        for algorithm in ("sha256", "md5"):
            want = getattr(source, algorithm)
            if want and (digest := files.file_digest(part, algorithm, CHUNK)) != want:
                problem = f"has {algorithm} {digest}, expected {want}"
                break
    if problem:
        part.unlink()
        raise UserError(f"the download of {source.file} from {source.url} {problem}; it was discarded "
                        f"and nothing was put in {paths.rel(dest.parent)}/; run `make dataset` again, or "
                        f"download the file yourself and put it at {paths.rel(dest)}")


def _unreachable(e: Exception) -> bool:
    """No answer (DNS, refused, no route) or a refusal (HTTP 404, 403, ...), as opposed to a transfer
    that broke off, which is worth resuming."""
    return isinstance(e, urllib.error.URLError)


def _reason(e: Exception) -> str:
    if isinstance(e, urllib.error.HTTPError):
        return f"the server answered HTTP {e.code} {e.reason}"
    if isinstance(e, urllib.error.URLError):
        return f"no connection: {e.reason}"
    if isinstance(e, http.client.IncompleteRead):
        return "the connection closed early"
    return f"{type(e).__name__}: {e}"


def _size(n: int) -> str:
    for unit in ("bytes", "KB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n} {unit}" if unit == "bytes" else f"{n:.1f} {unit}"
        n /= 1000


def _remove_if_empty(folder: Path) -> None:
    try:
        folder.rmdir()
    except OSError:
        pass  # another partial download waits there


# ---------------------------------------------------------------------------------------- extract
def extract(zip_path: Path, prefix: str | tuple[str, ...], into: Path, hint: str, *,
            empty: str | None = None, root: Path = paths.ROOT) -> None:
    """Extract the members of `zip_path` under `prefix` (e.g. "val2017/"; or several, e.g.
    ("leftImg8bit/train/", "leftImg8bit/val/") to leave leftImg8bit/test/ out) into `into`, which
    becomes what the prefixes share (val2017/, leftImg8bit/; a member's own path for a single file).

    Atomically: into a hidden folder beside `into` first (files.temp_name; a killed run's is removed
    by the next stage start), then renamed, so a corrupt or truncated zip leaves nothing. Every member stays inside that
    folder: a name that is absolute or climbs out with ".." is refused, not sanitised.
    `hint` says where a good copy comes from; `empty`, if given, replaces the sentence after the
    zip's path when it holds nothing under `prefix` (the default names the prefixes and adds `hint`).
    """
    prefixes = (prefix,) if isinstance(prefix, str) else tuple(prefix)
    top = os.path.commonpath([p.rstrip("/") for p in prefixes])  # what becomes `into`
    where = paths.rel(zip_path, root)
    into = Path(into)
    into.parent.mkdir(parents=True, exist_ok=True)
    partial = files.temp_name(into)  # a killed run's is removed when the next stage starts (stage_main)
    try:
        with zipfile.ZipFile(zip_path) as z:
            members = [m for m in z.infolist() if m.filename.startswith(prefixes) and not m.is_dir()]
            if not members:
                raise UserError(f"{where} " + (empty or f"holds nothing under {' or '.join(prefixes)}; is it the "
                                                        f"right archive? {hint}"))
            for m in members:
                if not _inside(m.filename):
                    raise UserError(f"{where} has a member outside its folders ({m.filename}); it is not the "
                                    f"official archive and nothing was extracted; {hint}")
            for m in tqdm(members, desc=f"extract {zip_path.name}", unit="file", mininterval=0.5, leave=False):
                z.extract(m, partial)  # reads and checks each member's CRC
        os.replace(partial / top, into)
    except (zipfile.BadZipFile, zipfile.LargeZipFile, EOFError, OSError) as e:
        raise UserError(f"{where} is corrupt or truncated ({e}); {hint}")
    finally:
        shutil.rmtree(partial, ignore_errors=True)


def _inside(name: str) -> bool:
    """A zip member name that stays inside the folder it is extracted into."""
    name = name.replace("\\", "/")
    return not name.startswith("/") and ".." not in name.split("/")
