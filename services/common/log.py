"""Messages for people: one line per event, one actionable line per error, a table at the end."""
import sys
from contextlib import contextmanager


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
    except KeyboardInterrupt:
        print(f"{stage}: interrupted; nothing was renamed into place", file=sys.stderr, flush=True)
        raise SystemExit(130)


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
