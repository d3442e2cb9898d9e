"""MkDocs hook: the configuration reference, written at build time from the config's own sources.

Every key of services/common/defaults.yaml, with its default, its type, what the checks in
services/common/config.py allow and the comment beside it in defaults.yaml, replaces the marker
line in docs/configuration.md. A key added to the defaults appears with no hand edit; a key without
a comment fails the build, so the reference cannot fall behind the file it is made from.
"""
import re
import sys
from pathlib import Path

import yaml
from mkdocs.exceptions import PluginError

ROOT = Path(__file__).resolve().parents[2]
DEFAULTS = ROOT / "services" / "common" / "defaults.yaml"
PAGE = "configuration.md"
MARKER = "<!-- configuration reference: generated from defaults.yaml and config.py at build time -->"

KEY_LINE = re.compile(r"^(?P<indent> *)(?P<key>[A-Za-z_]\w*):(?P<rest>.*)$")
# A YAML comment starts at a '#' after whitespace; a '#' inside a value (an URL fragment) does not.
COMMENT = re.compile(r"(^|\s)#\s?")


def config_module():
    """services/common/config.py itself, so its choices and ranges are read, not copied."""
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    from services.common import config
    return config


def split_comment(text: str) -> tuple[str, str]:
    m = COMMENT.search(text)
    return (text, "") if m is None else (text[:m.start()], text[m.end():])


def parse_defaults(text: str) -> tuple[dict, dict]:
    """({section: {key: (value as written, comment)}}, {section: [notes]}). A comment line indented
    deeper than the keys continues the comment of the key above it; one at the keys' own indent is
    a note about the section (defaults.yaml uses both)."""
    sections, notes = {}, {}
    section = key = None
    for line in text.splitlines():
        stripped = line.strip()
        indent = len(line) - len(line.lstrip(" "))
        if not stripped:
            key = None
            continue
        if stripped.startswith("#"):
            body = split_comment(stripped)[1].strip()
            if section is None or indent == 0:
                key = None  # the file's header
            elif key is not None and indent > 2:
                value, comment = sections[section][key]
                sections[section][key] = (value, f"{comment} {body}".strip())
            else:
                key = None
                notes[section].append(body)
            continue
        m = KEY_LINE.match(line)
        if m is None:
            raise PluginError(f"{DEFAULTS.relative_to(ROOT)}: cannot read the line {line!r} "
                              f"(docs/hooks/config_reference.py expects `key: value  # comment`)")
        value, comment = split_comment(m["rest"])
        if not m["indent"]:
            section, key = m["key"], None
            sections[section], notes[section] = {}, []
        else:
            key = m["key"]
            sections[section][key] = (value.strip(), comment.strip())
    return sections, notes


def type_of(dotted: str, default, config) -> str:
    """What config._coerce accepts for this key, in words."""
    if default is None:  # config._coerce takes anything; _check_imgsz narrows the imgsz keys
        return "int or [h, w], or null" if dotted.endswith(".imgsz") else "any"
    also = f" or `{config.ALSO_ALLOWED[dotted]}`" if dotted in config.ALSO_ALLOWED else ""
    words = {bool: "bool (true/false)", int: "int", float: "float (an int is taken)", str: "str",
             list: "list (one value is taken as a list of one)", dict: "mapping"}
    return words.get(type(default), type(default).__name__) + also


def allowed(dotted: str, default, config) -> str:
    """The rules config.py checks for this key, from its own tables."""
    rules = []
    if dotted in config.CHOICES:
        how = "any of" if isinstance(default, list) else "one of"
        rules.append(f"{how}: " + ", ".join(f"`{c}`" for c in config.CHOICES[dotted]))
    if dotted in config.RANGES and not dotted.endswith(".imgsz"):  # the stride rule below says more
        lo, hi, hi_incl = config.RANGES[dotted]
        rules.append(f"{lo} ≤ value {'≤' if hi_incl else '<'} {hi}")
    if dotted == "export.opset":
        lo, hi = config.TOOLKIT_OPSETS
        rules.append(f"and {lo}..{hi} for the convert stage (rknn-toolkit2)")
    if dotted.endswith(".imgsz"):
        rules.append(f"every side a multiple of {config.STRIDE}, from 32 to {config.NPU_MAX_SIDE}")
    if dotted in config.NAME_KEYS:
        rules.append("a plain folder name: letters, digits, `_`, `-`, `.`")
    if dotted in config.URL_KEYS:
        rules.append("an `http://` or `https://` address")
    return "; ".join(rules) or "any value of its type"


def cell(text: str) -> str:
    """Text for a table cell: `|` would end the cell, and outside code spans `<name>` would be read as
    an HTML tag and vanish (the comments say datasets/<name>/)."""
    parts = text.replace("|", "\\|").split("`")
    return "`".join(p if i % 2 else p.replace("<", "&lt;").replace(">", "&gt;") for i, p in enumerate(parts))


def reference() -> str:
    text = DEFAULTS.read_text()
    sections, notes = parse_defaults(text)
    loaded = yaml.safe_load(text)
    parsed = {s: list(keys) for s, keys in sections.items()}
    if parsed != {s: list(keys) for s, keys in loaded.items()}:
        raise PluginError(f"{DEFAULTS.relative_to(ROOT)}: the keys read line by line differ from the YAML's; "
                          f"docs/hooks/config_reference.py expects one `key: value  # comment` per line")
    bare = [f"{s}.{k}" for s, keys in sections.items() for k, (_, comment) in keys.items() if not comment]
    if bare:
        raise PluginError(f"{DEFAULTS.relative_to(ROOT)}: no comment for {', '.join(bare)}; every key says what "
                          f"it does (`key: value  # what it does`), and the configuration reference shows it")
    config = config_module()
    out = []
    for section, keys in sections.items():
        out += [f"## {section}", ""]
        if notes[section]:
            out += [cell(" ".join(notes[section])), ""]
        out += ['<div class="config-reference" markdown>', "",
                "| key | default | type | allowed | what it does |", "|---|---|---|---|---|"]
        for key, (written, comment) in keys.items():
            dotted, default, shown = f"{section}.{key}", loaded[section][key], written.replace("|", "\\|")
            out.append(f"| `{dotted}` | `{shown}` | {cell(type_of(dotted, default, config))} | "
                       f"{cell(allowed(dotted, default, config))} | {cell(comment)} |")
        out += ["", "</div>", ""]
    return "\n".join(out)


def on_page_markdown(markdown: str, page, config, files) -> str:
    if page.file.src_uri != PAGE:
        return markdown
    if MARKER not in markdown:
        raise PluginError(f"docs/{PAGE} lost its marker line {MARKER}; the generated reference goes there")
    return markdown.replace(MARKER, reference())
