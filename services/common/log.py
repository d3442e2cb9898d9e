"""Messages for people: one line per event, one actionable line per error, a table at the end."""
import errno
import json
import sys
from contextlib import contextmanager
from pathlib import Path

from . import files, paths


FOLDER_ERRNOS = {errno.EACCES, errno.EPERM, errno.EROFS, errno.ENOSPC, errno.EDQUOT}


class UserError(Exception):
    """A problem the user can fix. Its message is one line naming the problem and the fix."""


def info(stage: str, msg: str) -> None:
    print(f"{stage}: {msg}", flush=True)


def warn(stage: str, msg: str) -> None:
    print(f"{stage}: warning: {msg}", file=sys.stderr, flush=True)


@contextmanager
def user_errors(stage: str):
    """Turn a UserError into one line on stderr and exit code 2 (no traceback: the line is the fix)."""
    try:
        yield
    except UserError as e:
        print(f"{stage}: error: {e}", file=sys.stderr, flush=True)
        raise SystemExit(2)
    except OSError as e:
        if e.errno not in FOLDER_ERRNOS:
            raise
        # A folder the stage cannot write (permissions, an immutable attribute, a read-only mount,
        # a full disk) is the user's to fix; whatever was half-built went to a temporary name.
        fix = ("free some space there" if e.errno in (errno.ENOSPC, errno.EDQUOT) else
               "give this user write access to it (chown/chmod, chattr -i, or a read-write mount)")
        where = paths.rel(files.final_name(e.filename)) if e.filename else "a file"
        print(f"{stage}: error: {where}: {e.strerror}; {fix}, then run the stage again", file=sys.stderr, flush=True)
        raise SystemExit(2)
    except KeyboardInterrupt:
        print(f"{stage}: interrupted; nothing was renamed into place", file=sys.stderr, flush=True)
        raise SystemExit(130)


# What mends unreadable weights in artifacts/<exp>/weights/: the fit stage copies the run's again.
MEND_WEIGHTS = ("`make fit` copies the weights again from the finished run (if the run's own are damaged too, "
                "`make fit FRESH=1` trains anew)")


@contextmanager
def reading(path, what: str, fix: str):
    """The error boundary around reading a file that a user or an earlier stage supplied (weights,
    ONNX, annotations): a parse error becomes one line naming the file, what it is, and a fix that
    works, usually the stage that writes it again."""
    try:
        yield
    except (UserError, KeyboardInterrupt, MemoryError):
        raise
    except Exception as e:
        raise UserError(f"{paths.rel(path)} ({what}) cannot be read ({type(e).__name__}){where_in_file(e)}; "
                        f"{fix}") from e


def read_json_object(path, what: str, fix: str, fields=()) -> dict:
    """A JSON object another stage wrote, read at the boundary: unparsable, not an object, or
    lacking one of `fields` is one line naming the file, where, and `fix`."""
    with reading(path, what, fix):
        data = json.loads(Path(path).read_text())
        if not isinstance(data, dict):
            raise ValueError(f"it holds a JSON {type(data).__name__}, not an object")
        missing = [f for f in fields if f not in data]
        if missing:
            raise KeyError(missing[0])
    return data


def where_in_file(e: Exception) -> str:
    """Where in the file the reader gave up, as far as it says: the line and column of a JSON or YAML
    parser, the key or field a structure lacked, or the reader's own first words."""
    if hasattr(e, "lineno") and hasattr(e, "colno"):  # json.JSONDecodeError
        return f" at line {e.lineno}, column {e.colno}: {e.msg}"
    mark = getattr(e, "problem_mark", None)  # yaml.MarkedYAMLError
    if mark is not None:
        return f" at line {mark.line + 1}, column {mark.column + 1}: {getattr(e, 'problem', '')}"
    if isinstance(e, KeyError):
        return f": no field {e.args[0]!r}" if e.args else ""
    text = " ".join(str(e).split())
    return f": {text[:120]}" if text else ""


def table(headers: list[str], rows: list[list], title: str = "") -> str:
    """A plain-text table: readable in a terminal, a CI log and a pasted thesis appendix."""
    cells = [[str(h) for h in headers]] + [[_fmt(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    line = lambda r: "  ".join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(r, widths)))
    out = [title] if title else []
    out += [line(cells[0]), "  ".join("-" * w for w in widths)] + [line(r) for r in cells[1:]]
    return "\n".join(out)


def _fmt(c) -> str:
    if isinstance(c, float):
        return f"{c:.3f}"
    return str(c)
