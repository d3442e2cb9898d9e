"""The documentation: README.md as the front door, docs/ as an MkDocs Material site that builds with
--strict and opens from a file with no network, and a configuration reference made from
defaults.yaml and config.py at build time."""
import base64
import collections
import json
import os
import re
import select
import shutil
import socket
import subprocess
import time
from html.parser import HTMLParser
from pathlib import Path

import pytest
import yaml

from tests.helpers import ROOT, make, needs_make_venv, one_error, pipeline_venv, require

pytestmark = needs_make_venv
CHROMIUM = next((c for c in ("/usr/bin/chromium", "/usr/bin/chromium-browser") if os.path.exists(c)), None)
MKDOCS = yaml.safe_load((ROOT / "mkdocs.yml").read_text())


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    """`make docs DOCS_SERVE=0` once, into a scratch root's artifacts/docs/site/."""
    root = tmp_path_factory.mktemp("docs-root")
    proc = make("docs", "DOCS_SERVE=0", root=root, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return root / "artifacts" / "docs" / "site", proc


def nav_pages(nav=MKDOCS["nav"]) -> dict:
    """{docs path: title} of every page in mkdocs.yml's nav."""
    pages = {}
    for item in nav:
        for title, target in item.items():
            pages.update(nav_pages(target) if isinstance(target, list) else {target: title})
    return pages


def locked_version(package: str) -> str:
    return re.search(rf"^{re.escape(package)}==(\S+)", (ROOT / "requirements" / "tools.lock").read_text(), re.M)[1]


# ------------------------------------------------------------------------------------------ the build
def test_the_site_builds_strict_with_material_from_the_tools_lock(site):
    out, proc = site
    assert "WARNING" not in proc.stderr, proc.stderr[-3000:]
    assert "docs: built" in proc.stdout
    built = sorted(str(p.relative_to(out)) for p in out.rglob("*.html") if p.name != "404.html")
    assert built == sorted(page.replace(".md", ".html") for page in nav_pages())
    generator = re.search(r'<meta name="generator" content="([^"]+)"', (out / "index.html").read_text())[1]
    assert generator == f"mkdocs-{locked_version('mkdocs')}, mkdocs-material-{locked_version('mkdocs-material')}"
    assert not (out / "hooks").exists()  # the build's own code is not published


def test_the_site_asks_nothing_of_the_network_when_built():
    """No web fonts and no script or style from another host, whatever the pages say."""
    assert MKDOCS["theme"]["font"] is False
    assert "offline" in MKDOCS["plugins"]
    # The offline plugin adds its worker shim from unpkg.com unless one is listed: ours is served locally.
    polyfills = MKDOCS["extra"]["polyfills"]
    assert any("iframe-worker" in url for url in polyfills)
    assert all(not str(url).startswith(("http:", "https:", "//")) for url in polyfills)


def test_a_default_without_a_comment_fails_the_build(tmp_path):
    """The reference cannot fall behind defaults.yaml: a key added without saying what it does stops
    the build, naming it. Run on a copy, so the project's own file is never touched."""
    for part in ("mkdocs.yml", "docs", "services/__init__.py", "services/common"):
        src, dst = ROOT / part, tmp_path / part
        dst.parent.mkdir(parents=True, exist_ok=True)
        (shutil.copytree if src.is_dir() else shutil.copy)(src, dst)
    defaults = tmp_path / "services" / "common" / "defaults.yaml"
    text = defaults.read_text()
    defaults.write_text(text.replace("\ntrain:\n", "\ntrain:\n  new_key: 3\n", 1))
    mkdocs = pipeline_venv() / "tools" / "bin" / "mkdocs"
    proc = subprocess.run([str(mkdocs), "build", "--strict", "--site-dir", str(tmp_path / "site")], cwd=tmp_path,
                          capture_output=True, text=True, timeout=300, env={**os.environ, "NO_MKDOCS_2_WARNING": "1"})
    # mkdocs' own refusal (exit 1), the hook's PluginError in one line, not a crash
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    assert "no comment for train.new_key" in proc.stderr, proc.stderr[-2000:]
    assert [line for line in proc.stderr.splitlines() if "no comment for" in line][0].startswith("ERROR"), proc.stderr


# ------------------------------------------------------------------------------------------ the browser
class Chromium:
    """Debian's headless Chromium, driven over its DevTools pipe (--remote-debugging-pipe: it reads
    NUL-terminated JSON on fd 3 and answers on fd 4), so the test sees every request a page makes."""

    def __init__(self, profile: Path):
        to_child, self._w = os.pipe()
        self._r, from_child = os.pipe()

        def as_fd_3_and_4():
            os.dup2(to_child, 3)
            os.dup2(from_child, 4)
        # Every host name resolves to nothing: a request that leaves the machine fails, and is seen.
        self.proc = subprocess.Popen(
            [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-sync",
             "--disable-background-networking", "--disable-component-update", "--host-resolver-rules=MAP * ~NOTFOUND",
             f"--user-data-dir={profile}", "--window-size=1280,900", "--remote-debugging-pipe", "about:blank"],
            preexec_fn=as_fd_3_and_4, pass_fds=(3, 4), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        os.close(to_child)
        os.close(from_child)
        self.buffer, self.events, self.last_id = b"", [], 0
        target = self.call("Target.createTarget", url="about:blank")["targetId"]
        self.session = self.call("Target.attachToTarget", targetId=target, flatten=True)["sessionId"]
        for domain in ("Page", "Network", "Runtime"):
            self.call(f"{domain}.enable", session=self.session)

    def call(self, method: str, session=None, **params) -> dict:
        self.last_id += 1
        message = {"id": self.last_id, "method": method, "params": params, **({"sessionId": session} if session else {})}
        os.write(self._w, json.dumps(message).encode() + b"\0")
        answer = self.wait(lambda m: m.get("id") == self.last_id)
        assert "error" not in answer, f"{method}: {answer['error']}"
        return answer["result"]

    def wait(self, wanted, timeout: float = 120) -> dict:
        """The first message `wanted` accepts; every event on the way is kept in self.events."""
        deadline = time.monotonic() + timeout
        while True:
            while b"\0" in self.buffer:
                raw, self.buffer = self.buffer.split(b"\0", 1)
                message = json.loads(raw)
                if "method" in message:
                    self.events.append(message)
                if wanted(message):
                    return message
            left = deadline - time.monotonic()
            assert left > 0 and select.select([self._r], [], [], left)[0], "Chromium did not answer in time"
            chunk = os.read(self._r, 1 << 20)
            assert chunk, "Chromium closed its DevTools pipe"
            self.buffer += chunk

    def open(self, url: str) -> None:
        seen = len(self.events)
        self.call("Page.navigate", session=self.session, url=url)
        self.wait(lambda m: m.get("method") == "Page.loadEventFired" and m.get("sessionId") == self.session)
        assert len(self.events) > seen

    def evaluate(self, expression: str):
        result = self.call("Runtime.evaluate", session=self.session, expression=expression, returnByValue=True)
        return result["result"].get("value")  # absent for undefined

    def close(self) -> None:
        self.proc.kill()
        self.proc.wait(timeout=30)
        os.close(self._w)
        os.close(self._r)


def search(browser: Chromium, word: str) -> int:
    """Type into the search box as a person would; the number of results once the index answers."""
    typed = ("(() => { const box = document.querySelector('input.md-search__input'); box.focus(); "
             f"box.value = {json.dumps(word)}; box.dispatchEvent(new Event('input', {{bubbles: true}})); }})()")
    for _ in range(60):  # the worker loads the index on first use: allow a slow machine 30 s
        browser.evaluate(typed)
        found = browser.evaluate("document.querySelectorAll('.md-search-result__item').length")
        if found:
            return found
        time.sleep(0.5)
    return 0


PAGE_STATE = """JSON.stringify({
  title: document.title,
  h1: (document.querySelector('article h1') || {}).textContent || '',
  images: document.images.length,
  broken: [...document.images].filter(i => !(i.complete && i.naturalWidth > 0)).map(i => i.src),
})"""


def test_every_page_opens_from_a_file_with_the_network_blocked(site, tmp_path):
    require(CHROMIUM, "Debian's chromium, to open the site (`make test` installs it)")
    out, _ = site
    browser = Chromium(tmp_path / "profile")
    try:
        seen = {}
        for page, title in nav_pages().items():
            browser.open((out / page.replace(".md", ".html")).as_uri())
            seen[page] = (json.loads(browser.evaluate(PAGE_STATE)), title)
            if page == "index.md":
                shot = browser.call("Page.captureScreenshot", session=browser.session, format="png")
                (tmp_path / "home.png").write_bytes(base64.b64decode(shot["data"]))
                found = search(browser, "shm")
    finally:
        browser.close()
    site_name = MKDOCS["site_name"]
    for page, (state, title) in seen.items():
        # Material titles the home page with the site's name alone, every other page "<page> - <site>".
        assert state["title"] == (site_name if page == "index.md" else f"{title} - {site_name}"), page
        assert state["h1"].strip(), f"{page} has no heading"
        assert not state["broken"], f"{page}: images that did not load: {state['broken']}"
    assert seen["index.md"][0]["images"] >= 1  # the pipeline picture
    assert found > 0, "the search found nothing offline (its worker runs through the vendored iframe-worker shim)"
    requests = [e["params"]["request"]["url"] for e in browser.events if e["method"] == "Network.requestWillBeSent"]
    assert requests and all(url.startswith(("file:", "data:", "blob:", "about:")) for url in requests), \
        sorted({u for u in requests if not u.startswith(("file:", "data:", "blob:", "about:"))})
    failed = [e["params"] for e in browser.events if e["method"] == "Network.loadingFailed"]
    assert not failed, failed
    assert (tmp_path / "home.png").stat().st_size > 10_000


# ------------------------------------------------------------------------------------------ the reference
class Rows(HTMLParser):
    """The text of every table row's cells."""

    def __init__(self):
        super().__init__()
        self.rows, self.cell = [], None

    def handle_starttag(self, tag, attrs):
        if tag == "tr":
            self.rows.append([])
        elif tag in ("td", "th"):
            self.cell = []

    def handle_endtag(self, tag):
        if tag in ("td", "th") and self.cell is not None:
            self.rows[-1].append("".join(self.cell).strip())
            self.cell = None

    def handle_data(self, data):
        if self.cell is not None:
            self.cell.append(data)


def test_every_default_is_in_the_configuration_reference(site):
    out, _ = site
    parser = Rows()
    parser.feed((out / "configuration.html").read_text())
    header = parser.rows[0]
    assert header == ["key", "default", "type", "allowed", "what it does"]
    shown = {row[0]: row for row in parser.rows if row and row[0] != "key"}
    defaults = yaml.safe_load((ROOT / "services" / "common" / "defaults.yaml").read_text())
    for section, keys in defaults.items():
        for key, value in keys.items():
            dotted = f"{section}.{key}"
            assert dotted in shown, f"{dotted} is not in the configuration reference"
            _, default, kind, allowed, comment = shown[dotted]
            assert yaml.safe_load(default) == value, f"{dotted}: shown {default!r}, defaults.yaml has {value!r}"
            assert kind and allowed and comment, f"{dotted}: {shown[dotted]}"
    assert len(shown) == sum(len(keys) for keys in defaults.values())
    assert "one of: rk3588, rk3576" in " ".join(shown["convert.platform"])  # choices come from config.py


# ------------------------------------------------------------------------------------------ README and coverage
def test_the_readme_is_a_short_front_door_without_paste_leftovers():
    text = (ROOT / "README.md").read_text()
    assert len(text.splitlines()) <= 150
    assert "-->" not in re.sub(r"<!--.*?-->", "", text, flags=re.S), "a stray '-->' outside a comment"
    rows = [line.strip() for line in text.splitlines() if line.startswith("|") and not set(line) <= set("|-: ")]
    doubled = [row for row, n in collections.Counter(rows).items() if n > 1]
    assert not doubled, doubled
    assert "make demo" in text and "make test" in text and "make docs" in text and "docs/" in text


def help_words() -> tuple[list, list]:
    """(targets, variables) that `make help` lists, and the variables the Makefile's header names."""
    proc = subprocess.run(["make", "--no-print-directory", "help"], cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    targets_part, variables_part = proc.stdout.split("\nVariables:", 1)
    targets = re.findall(r"^  ([a-z][\w-]*)\s{2,}", targets_part, re.M)
    variables = set(re.findall(r"\b([A-Z][A-Z_]+)=", variables_part))
    header = re.search(r"^# Variables: (.*?)\(see", (ROOT / "Makefile").read_text(), re.M | re.S)[1]
    variables |= set(re.findall(r"[A-Z][A-Z_]+", header))
    return targets, sorted(variables)


def test_every_target_and_variable_of_make_help_is_documented():
    targets, variables = help_words()
    assert "docs" in targets and "DOCS_PORT" in variables
    docs = "\n".join(p.read_text() for p in sorted((ROOT / "docs").rglob("*.md")))
    readme = (ROOT / "README.md").read_text()
    missing = [t for t in targets if f"make {t}" not in docs]
    assert not missing, f"targets missing from docs/: {missing}"
    missing = [t for t in targets if f"make {t}" not in readme]
    assert not missing, f"targets missing from README.md's table: {missing}"
    missing = [v for v in variables if not re.search(rf"\b{v}\b", docs)]
    assert not missing, f"variables missing from docs/: {missing}"


# ------------------------------------------------------------------------------------------ make docs
def test_a_busy_docs_port_is_one_line_naming_DOCS_PORT(tmp_path):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        proc = make("docs", f"DOCS_PORT={port}", root=tmp_path, timeout=300)
    line = one_error(proc)
    assert "DOCS_PORT" in line and str(port) in line
    assert not (tmp_path / "artifacts" / "docs").exists()  # refused before anything was built
