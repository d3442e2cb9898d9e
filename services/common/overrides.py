"""`section.key=value` overrides as the user wrote them. Standard library only: the runner (Make's
ARGS) uses it before any environment exists, and every stage again on its own command line.

A shell, and Make's ARGS, split at spaces: `evaluate.sets=[val, coco_person]` arrives as two words,
`evaluate.sets=[val,` and `coco_person]`. A value whose brackets or braces are still open continues
in the next word, so a YAML list or mapping written with spaces comes back whole.
"""
import shlex

OPENERS, CLOSERS = "[{", "]}"


class OverrideError(ValueError):
    """Words that cannot be made into overrides; the message says why and how to quote them."""


def split_args(text: str) -> list[str]:
    """Make's ARGS as the user means it: shell words (quotes group), rejoined where a bracket is open."""
    try:
        words = shlex.split(text)
    except ValueError as e:  # shlex: "No closing quotation"
        raise OverrideError(f'ARGS="{text}" cannot be split into words ({e}); close the quote, or write a value '
                            f'with spaces in single quotes inside the double ones: ARGS="dataset.name=\'my data\'"')
    return join_words(words)


def join_words(words: list[str]) -> list[str]:
    """Rejoin the words of one value: a word whose [ or { is not closed yet takes the next ones."""
    out, depth = [], 0
    for word in words:
        if depth > 0:
            out[-1] += " " + word
        else:
            out.append(word)
        depth = max(0, depth + _depth(word))
    return out


def _depth(word: str) -> int:
    """Brackets opened minus closed, outside quotes."""
    depth, quote = 0, ""
    for ch in word:
        if quote:
            quote = "" if ch == quote else quote
        elif ch in "'\"":
            quote = ch
        elif ch in OPENERS:
            depth += 1
        elif ch in CLOSERS:
            depth -= 1
    return depth


def stray_word_line(word: str, previous: str | None) -> str:
    """The line for a word that is no `section.key=value`: where it most likely came from, and the quoting."""
    if previous and "=" in previous:
        key, value = previous.split("=", 1)
        return (f"'{word}' after {previous} is not section.key=value; if it is part of {key}'s value, the value was "
                f"split at a space: quote it whole, e.g. ARGS=\"{key}='{value} {word}'\" (a list or mapping may keep "
                f"its spaces: ARGS=\"evaluate.sets=[val, coco_person]\")")
    return f"override '{word}' must look like section.key=value (e.g. dataset.seed=1)"
