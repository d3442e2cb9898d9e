"""Downloads, for real, from an HTTP server on 127.0.0.1 serving generated archives: a transfer cut
half-way resumes, a wrong file is refused and leaves nothing in raw/, and present files mean no
network at all (every socket call of the stage is blocked and logged by tests/netguard). The same
server plays the Cityscapes site for cityscapesscripts' real downloader (dataset.cityscapes_url)."""
import hashlib
import io
import json
import os
import re
import shutil
import subprocess
import sys
import threading
import urllib.parse
import zipfile
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from tests.helpers import (NetGuard, ROOT, SHARED_CITYPERSONS, demo_root, needs_real_citypersons, one_error, refusal, require,
                           run_module)
from services.common import config
from services.common.log import UserError
from services.dataset import citypersons, download
from tests.test_coco_person import make_coco_raw, zip_coco

CITYPERSONS = str(ROOT / "configs" / "citypersons.yaml")
DEMO = str(ROOT / "configs" / "demo.yaml")


class Server:
    """Serves `files` (path with query -> bytes) with HTTP Range support, as the real hosts do; a
    path in `cut` has its first transfer cut off half-way (the connection closes early, as when a
    network drops). `log` records (path, Range header, bytes sent) per GET request.
    For the Cityscapes site: POST /login with a username and password from `accounts` answers 302
    and a session cookie (200 and no cookie otherwise, as the site does); paths in `private` answer
    403 without that cookie."""
    COOKIE = "PHPSESSID=fake-cityscapes-session"

    def __init__(self):
        self.files, self.cut, self.log = {}, set(), []
        self.accounts, self.private, self.logins = {}, set(), []
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):
                body = server.files.get(self.path)
                if body is None:
                    self.send_error(404)
                    return
                if self.path in server.private and server.COOKIE not in self.headers.get("Cookie", ""):
                    self.send_error(403)
                    return
                wanted = self.headers.get("Range")
                start = int(re.fullmatch(r"bytes=(\d+)-", wanted)[1]) if wanted else 0
                if wanted and start >= len(body):
                    self.send_response(416)
                    self.send_header("Content-Range", f"bytes */{len(body)}")
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                self.send_response(206 if wanted else 200)
                if wanted:
                    self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
                self.send_header("Content-Length", str(len(body) - start))
                self.end_headers()
                payload = body[start:]
                if self.path in server.cut:
                    server.cut.discard(self.path)
                    payload = payload[: len(payload) // 2]
                self.wfile.write(payload)
                self.wfile.flush()
                server.log.append((self.path, wanted, len(payload)))

            def do_POST(self):
                form = urllib.parse.parse_qs(self.rfile.read(int(self.headers.get("Content-Length", 0))).decode())
                user, password = form.get("username", [""])[0], form.get("password", [""])[0]
                ok = self.path == "/login" and user in server.accounts and server.accounts[user] == password
                server.logins.append((user, ok))
                self.send_response(302 if ok else 200)
                if ok:
                    self.send_header("Location", "/")
                    self.send_header("Set-Cookie", f"{server.COOKIE}; path=/")
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args):
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()


@pytest.fixture
def server():
    s = Server()
    yield s
    s.httpd.shutdown()
    s.httpd.server_close()


def archive(tmp_path: Path) -> bytes:
    """A generated val2017.zip (a few hundred KB: real JPEGs of noise, so it does not compress)."""
    import numpy as np
    from PIL import Image
    src = tmp_path / "made"
    make_coco_raw(src)
    rng = np.random.default_rng(0)
    for p in (src / "val2017").iterdir():
        Image.fromarray(rng.integers(0, 255, (240, 320, 3), dtype=np.uint8)).save(p, quality=95)
    images, _ = zip_coco(src, tmp_path / "zips")
    return images.read_bytes()


def source_for(server: Server, body: bytes, **overrides) -> download.Source:
    server.files["/zips/val2017.zip"] = body
    pins = {"size": len(body), "md5": hashlib.md5(body).hexdigest(), **overrides}
    return download.Source("COCO val2017 images", f"{server.url}/zips/val2017.zip", **pins)


# ------------------------------------------------------------------------------ fetch
def test_a_transfer_cut_half_way_resumes_and_completes(tmp_path, server):
    body = archive(tmp_path)
    src = source_for(server, body)
    server.cut.add("/zips/val2017.zip")
    raw, partial = tmp_path / "datasets/coco/raw", tmp_path / "datasets/coco/.downloads"
    download.fetch(src, raw / "val2017.zip", partial)
    assert (raw / "val2017.zip").read_bytes() == body
    (first, r1, n1), (again, r2, n2) = server.log
    assert r1 is None and n1 == len(body) // 2            # the cut transfer
    assert r2 == f"bytes={n1}-" and n1 + n2 == len(body)  # only the rest was asked for and sent
    assert not partial.exists()                           # nothing of ours left behind

    # and what arrives is what the stage extracts into raw/
    download.extract(raw / "val2017.zip", "val2017/", raw / "val2017", hint="")
    assert len(list((raw / "val2017").iterdir())) == 10


def test_a_partial_download_from_an_earlier_run_is_resumed(tmp_path, server):
    body = archive(tmp_path)
    src = source_for(server, body)
    partial = tmp_path / "datasets/coco/.downloads"
    partial.mkdir(parents=True)
    (partial / "val2017.zip.part").write_bytes(body[:12345])  # the run before was killed here
    download.fetch(src, tmp_path / "datasets/coco/raw/val2017.zip", partial)
    assert (tmp_path / "datasets/coco/raw/val2017.zip").read_bytes() == body
    assert server.log == [("/zips/val2017.zip", "bytes=12345-", len(body) - 12345)]


def test_a_wrong_checksum_is_refused_and_nothing_is_left_in_raw(tmp_path, server):
    body = archive(tmp_path)
    src = source_for(server, body, md5="0" * 32)
    raw, partial = tmp_path / "datasets/coco/raw", tmp_path / "datasets/coco/.downloads"
    with pytest.raises(UserError) as e:
        download.fetch(src, raw / "val2017.zip", partial)
    assert f"has md5 {hashlib.md5(body).hexdigest()}, expected {'0' * 32}" in str(e.value)
    assert "it was discarded" in str(e.value) and "put it at" in str(e.value)
    assert not raw.exists() and not partial.exists()
    assert server.log  # it was downloaded, then refused

    # sha256 pins (the .mat files) are checked the same way
    with pytest.raises(UserError, match=r"has sha256 [0-9a-f]{64}, expected f{64}"):
        download.fetch(source_for(server, body, md5=None, sha256="f" * 64), raw / "val2017.zip", partial)
    assert not raw.exists()


def test_a_file_of_the_wrong_size_is_not_downloaded(tmp_path, server):
    body = archive(tmp_path)
    src = source_for(server, body, size=len(body) + 1)
    with pytest.raises(UserError, match=rf"offers {len(body)} bytes, but the official val2017.zip has {len(body) + 1}"):
        download.fetch(src, tmp_path / "raw/val2017.zip", tmp_path / ".downloads")
    assert not (tmp_path / "raw").exists() and not (tmp_path / ".downloads").exists()


def test_an_unreachable_server_names_the_file_its_source_and_its_place(tmp_path, server):
    src = download.Source("COCO val2017 images", f"{server.url}/zips/val2017.zip", size=10)
    with pytest.raises(UserError) as e:  # 404: nothing to resume
        download.fetch(src, tmp_path / "raw/val2017.zip", tmp_path / ".downloads")
    assert str(e.value).startswith("missing COCO val2017 images (val2017.zip, 10 bytes): the server answered HTTP 404")
    assert f"download {src.url} and put it at" in str(e.value)


# ------------------------------------------------------------------------------ the stage
def coco_stage(root: Path, *extra, env=None):
    return run_module("dataset", ["--config", DEMO, "evaluate.sets=[val, coco_person]", *extra], root,
                      env={"PIPELINE_OFFLINE": "0", **(env or {})})


def test_stage_refuses_files_that_are_not_the_official_ones(tmp_path, demo_raw, server):
    """The stage pins the official sizes and checksums: a server offering other files (here the
    generated archives) is refused, one line per file, and raw/ stays empty."""
    root = demo_root(tmp_path, demo_raw)
    body = archive(tmp_path)
    server.files["/zips/val2017.zip"] = body
    server.files["/annotations/annotations_trainval2017.zip"] = body[:1000]
    proc = coco_stage(root, f"dataset.coco_url={server.url}")
    lines = refusal(proc, 2, "dataset")
    assert "offers 1000 bytes, but the official annotations_trainval2017.zip has 252907541" in lines[0]
    assert f"offers {len(body)} bytes, but the official val2017.zip has 815585330" in lines[1]
    assert "put it at datasets/coco/raw/val2017.zip" in lines[1]
    assert not (root / "datasets/coco/raw").exists() and not (root / "datasets/coco/.downloads").exists()


def test_no_network_attempt_when_the_files_are_present(tmp_path, demo_raw):
    """citypersons.yaml with downloads allowed, every raw file in place (the COCO ones as the two
    archives, which the stage extracts): not one socket call."""
    root = tmp_path
    shutil.copytree(demo_raw, root / "datasets/citypersons/raw")  # the demo pictures in the real layout
    src = tmp_path / "made"
    make_coco_raw(src)
    zip_coco(src, root / "datasets/coco/raw")
    guard = NetGuard(tmp_path)
    proc = run_module("dataset", ["--config", CITYPERSONS], root, env={**guard.env(), "PIPELINE_OFFLINE": "0"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (root / "datasets/citypersons/yolo/manifest.json").is_file()
    assert (root / "datasets/coco/yolo/person_val2017.json").is_file()
    guard.assert_no_network("dataset")


def test_offline_with_files_missing_lists_each_file_and_touches_no_network(tmp_path):
    guard = NetGuard(tmp_path)
    env = {k: "" for k in ("CITYSCAPES_USERNAME", "CITYSCAPES_PASSWORD")}
    proc = run_module("dataset", ["--config", CITYPERSONS], tmp_path / "root",
                      env={**guard.env(), "PIPELINE_OFFLINE": "1", **env})
    lines = refusal(proc, 5, "dataset")  # two .mat files, the Cityscapes zip, the two COCO archives
    mat, cityscapes, coco_lines = lines[:2], lines[2], lines[3:]
    for line, split in zip(mat, ("train", "val")):
        assert f"missing CityPersons {split} annotations (anno_{split}.mat" in line and "offline (OFFLINE=1)" in line
        assert f"https://raw.githubusercontent.com/cvgroup-njust/CityPersons/master/annotations/anno_{split}.mat" in line
        assert f"put it at datasets/citypersons/raw/anno_{split}.mat" in line
    assert "https://www.cityscapes-dataset.com/register/" in cityscapes and "free account" in cityscapes
    assert "put it at datasets/citypersons/raw/leftImg8bit_trainvaltest.zip" in cityscapes
    assert "CITYSCAPES_USERNAME and CITYSCAPES_PASSWORD" in cityscapes
    assert "http://images.cocodataset.org/annotations/annotations_trainval2017.zip" in coco_lines[0]
    assert "http://images.cocodataset.org/zips/val2017.zip" in coco_lines[1]
    guard.assert_no_network("dataset")
    assert not (tmp_path / "root/datasets/citypersons/raw").exists()


@needs_real_citypersons
def test_annotation_files_are_fetched_and_checked_against_the_pinned_checksums(tmp_path, server):
    """The real .mat files served locally: downloaded, verified against the pins, and converted."""
    for split in ("train", "val"):
        server.files[f"/annotations/anno_{split}.mat"] = (SHARED_CITYPERSONS / f"anno_{split}.mat").read_bytes()
    from services.common import config
    cfg = config.load(CITYPERSONS, [f"dataset.citypersons_url={server.url}/annotations"])
    raw = tmp_path / "datasets/citypersons/raw"
    (raw / "leftImg8bit").mkdir(parents=True)  # images in place: only the annotations are fetched
    assert citypersons.fetch(cfg, tmp_path, online=True) == []
    for split in ("train", "val"):
        assert (raw / f"anno_{split}.mat").read_bytes() == server.files[f"/annotations/anno_{split}.mat"]
    assert citypersons.fetch(cfg, tmp_path, online=True) == [] and len(server.log) == 2  # present: no request


HIDE_CITYSCAPESSCRIPTS = """\
# Test-only (tests/test_download.py): this process sees no cityscapesscripts, as if it were not
# installed; then the next sitecustomize on PYTHONPATH (tests/netguard's) runs as usual.
import importlib.util, os, sys


class _Hide:
    def find_spec(self, name, path=None, target=None):
        if name == "cityscapesscripts" or name.startswith("cityscapesscripts."):
            raise ModuleNotFoundError(f"No module named {name!r} (hidden by the test)", name=name)
        return None


sys.meta_path.insert(0, _Hide())
_here = os.path.dirname(os.path.abspath(__file__))
for _entry in os.environ.get("PYTHONPATH", "").split(os.pathsep):
    _next = os.path.join(_entry, "sitecustomize.py")
    if _entry and os.path.abspath(_entry) != _here and os.path.isfile(_next):
        _spec = importlib.util.spec_from_file_location("_chained_sitecustomize", _next)
        _spec.loader.exec_module(importlib.util.module_from_spec(_spec))
        break
"""


def without_cityscapesscripts(tmp_path: Path, guard: NetGuard) -> dict:
    """Environment for a stage process in which cityscapesscripts cannot be imported (it is installed
    in the test environment) and every network attempt is blocked and logged (tests/netguard): one
    sitecustomize.py can run per process, so the hiding one runs netguard's after itself."""
    hide = tmp_path / "hide-cityscapesscripts"
    hide.mkdir()
    (hide / "sitecustomize.py").write_text(HIDE_CITYSCAPESSCRIPTS)
    return guard.env(before=[hide])


def test_cityscapes_account_without_the_downloader_says_how_to_install_it(tmp_path, demo_raw):
    guard = NetGuard(tmp_path)
    hidden = without_cityscapesscripts(tmp_path, guard)
    # the hiding must work, or this test would prove nothing; netguard, chained after it, too
    probe = subprocess.run(
        [sys.executable, "-c", "import socket\ntry:\n import cityscapesscripts\nexcept ModuleNotFoundError:\n"
         " print('hidden')\ntry:\n socket.getaddrinfo('example.org', 80)\nexcept OSError:\n pass"],
        env={**os.environ, **hidden}, capture_output=True, text=True, timeout=60)
    require(probe.stdout.split() == ["hidden"],
            f"a subprocess that cannot import cityscapesscripts (the test's sitecustomize): {probe.stdout + probe.stderr}")
    assert guard.log.read_text() == "getaddrinfo example.org\n", "netguard did not run after the hiding"
    guard.log.unlink()  # the probe's own, deliberate attempt
    root = tmp_path / "root"
    shutil.copytree(demo_raw, root / "datasets/citypersons/raw")
    shutil.rmtree(root / "datasets/citypersons/raw/leftImg8bit")
    env = {**hidden, "PIPELINE_OFFLINE": "0", "CITYSCAPES_USERNAME": "someone", "CITYSCAPES_PASSWORD": "secret"}
    proc = run_module("dataset", ["--config", CITYPERSONS, "evaluate.sets=[val]"], root, env=env)
    line = one_error(proc, "dataset")
    assert "cityscapesscripts (its downloader) is not installed" in line
    assert "-m pip install cityscapesscripts" in line and "leftImg8bit_trainvaltest.zip" in line
    assert "secret" not in proc.stderr + proc.stdout
    guard.assert_no_network("dataset")


# ------------------------------------------------------------------------------ Cityscapes, with an account
CITYSCAPES_USER, CITYSCAPES_PASSWORD = "someone@example.org", "pa55-w0rd-never-shown"
PACKAGE = "/file-handling/?packageID=3"  # leftImg8bit_trainvaltest.zip's id on the site
MAT_ONLY = ["anno_train.mat", "anno_val.mat"]  # raw/ of citypersons_root: nothing else may appear


def leftimg8bit_zip(demo_raw: Path, pictures: int | None = None) -> bytes:
    """A leftImg8bit_trainvaltest.zip in the real layout (README, license.txt, leftImg8bit/{train,
    val,test}/<city>/...png) holding the demo pictures (the first few, or all); stored, not deflated."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_STORED) as z:
        z.writestr("README", "The Cityscapes Dataset (a test stand-in)\n")
        z.writestr("license.txt", "test only\n")
        for png in sorted((demo_raw / "leftImg8bit").rglob("*.png"))[:pictures]:
            z.write(png, png.relative_to(demo_raw).as_posix())
        z.write(png, "leftImg8bit/test/berlin/berlin_000000_000019_leftImg8bit.png")
    return buf.getvalue()


@pytest.fixture(scope="module")
def cityscapes_zip(demo_raw) -> bytes:
    """Every demo picture (77 MB): what the stage converts."""
    return leftimg8bit_zip(demo_raw)


@pytest.fixture(scope="module")
def small_cityscapes_zip(demo_raw) -> bytes:
    """A few pictures (a few MB): enough for what happens to a download."""
    return leftimg8bit_zip(demo_raw, pictures=12)


def cityscapes_site(server: Server, body: bytes, md5: str | None = None) -> None:
    """What the login and cityscapesscripts' downloader touch on www.cityscapes-dataset.com."""
    server.accounts[CITYSCAPES_USER] = CITYSCAPES_PASSWORD
    packages = [{"name": "gtFine_trainvaltest.zip", "packageID": "1", "size": "241MB", "thirdparty": "0"},
                {"name": citypersons.CITYSCAPES_ZIP, "packageID": "3", "size": f"{len(body) / 2**20:.1f} MB",
                 "thirdparty": "0"}]
    server.files["/login"] = b"<html><form method=post>...</form></html>"
    server.files["/downloads/?list"] = json.dumps(packages).encode()
    md5 = md5 or hashlib.md5(body).hexdigest()
    server.files["/md5-sum/?packageID=3"] = f"{md5}  {citypersons.CITYSCAPES_ZIP}\n".encode()
    server.files[PACKAGE] = body
    server.private |= {"/downloads/?list", "/md5-sum/?packageID=3", PACKAGE}


def account(password=CITYSCAPES_PASSWORD) -> dict:
    return {"CITYSCAPES_USERNAME": CITYSCAPES_USER, "CITYSCAPES_PASSWORD": password, "PIPELINE_OFFLINE": "0"}


def citypersons_root(tmp_path: Path, demo_raw: Path) -> Path:
    """A project root with the .mat files in raw/ and no images: only the Cityscapes zip is missing."""
    raw = tmp_path / "datasets/citypersons/raw"
    raw.mkdir(parents=True)
    for split in ("train", "val"):
        shutil.copyfile(demo_raw / f"anno_{split}.mat", raw / f"anno_{split}.mat")
    return tmp_path


def test_cityscapes_url_must_be_an_address():
    assert config.load(CITYPERSONS)["dataset"]["cityscapes_url"] == citypersons.CITYSCAPES_SITE
    with pytest.raises(UserError, match=r"dataset.cityscapes_url=ftp://mirror must be an http:// or https://"):
        config.load(CITYPERSONS, ["dataset.cityscapes_url=ftp://mirror"])


def test_cityscapes_account_downloads_the_zip_with_cityscapesscripts(tmp_path, demo_raw, cityscapes_zip, server):
    """The whole stage: it logs in, cityscapesscripts' downloader fetches the zip (its md5 checked),
    the zip lands in raw/ byte for byte, is extracted (train and val only) and converted."""
    root = citypersons_root(tmp_path, demo_raw)
    cityscapes_site(server, cityscapes_zip)
    proc = run_module("dataset", ["--config", CITYPERSONS, "evaluate.sets=[val]",
                                  f"dataset.cityscapes_url={server.url}"], root, env=account())
    assert proc.returncode == 0, proc.stderr[-3000:]
    raw = root / "datasets/citypersons/raw"
    assert (raw / citypersons.CITYSCAPES_ZIP).read_bytes() == cityscapes_zip
    assert sorted(p.name for p in (raw / "leftImg8bit").iterdir()) == ["train", "val"]
    built = json.loads((root / "datasets/citypersons/yolo/manifest.json").read_text())
    assert "cityscapes_url" not in built["fingerprint"]["dataset_config"]  # a mirror is not a rebuild
    assert not (root / "datasets/citypersons/.downloads").exists()
    assert server.logins == [(CITYSCAPES_USER, True)]
    assert [path for path, _, _ in server.log] == ["/login", "/downloads/?list", "/md5-sum/?packageID=3", PACKAGE]
    assert CITYSCAPES_PASSWORD not in proc.stdout + proc.stderr


def test_cityscapes_wrong_password_is_one_line_and_leaves_raw_alone(tmp_path, demo_raw, server):
    root = citypersons_root(tmp_path, demo_raw)
    cityscapes_site(server, b"never sent")
    proc = run_module("dataset", ["--config", CITYPERSONS, "evaluate.sets=[val]",
                                  f"dataset.cityscapes_url={server.url}"], root, env=account("wrong-one"))
    line = one_error(proc, "dataset")
    assert "the Cityscapes login failed: check CITYSCAPES_USERNAME and CITYSCAPES_PASSWORD" in line
    assert "put it at datasets/citypersons/raw/leftImg8bit_trainvaltest.zip" in line
    assert sorted(p.name for p in (root / "datasets/citypersons/raw").iterdir()) == MAT_ONLY
    assert not (root / "datasets/citypersons/.downloads").exists()
    assert server.logins == [(CITYSCAPES_USER, False)] and [p for p, _, _ in server.log] == ["/login"]
    assert "wrong-one" not in proc.stdout + proc.stderr


def test_cityscapes_download_with_the_wrong_md5_is_discarded(tmp_path, demo_raw, small_cityscapes_zip, server,
                                                             monkeypatch, capsys):
    body = small_cityscapes_zip
    root = citypersons_root(tmp_path, demo_raw)
    cityscapes_site(server, body, md5="0" * 32)
    for k, v in account().items():
        monkeypatch.setenv(k, v)
    cfg = config.load(CITYPERSONS, [f"dataset.cityscapes_url={server.url}"])
    problems = citypersons.fetch(cfg, root, online=True)
    assert len(problems) == 1 and "did not match its md5 and was discarded" in problems[0], problems
    assert server.log[-1] == (PACKAGE, None, len(body))  # downloaded whole, then refused
    assert sorted(p.name for p in (root / "datasets/citypersons/raw").iterdir()) == MAT_ONLY
    assert not (root / "datasets/citypersons/.downloads").exists()
    out = capsys.readouterr()
    assert CITYSCAPES_PASSWORD not in out.out + out.err + problems[0]


def test_cityscapes_download_cut_half_way_is_kept_and_resumed(tmp_path, demo_raw, small_cityscapes_zip, server,
                                                              monkeypatch):
    body = small_cityscapes_zip
    root = citypersons_root(tmp_path, demo_raw)
    cityscapes_site(server, body)
    server.cut.add(PACKAGE)
    for k, v in account().items():
        monkeypatch.setenv(k, v)
    cfg = config.load(CITYPERSONS, [f"dataset.cityscapes_url={server.url}"])
    part = root / "datasets/citypersons/.downloads" / citypersons.CITYSCAPES_ZIP
    zip_path = root / "datasets/citypersons/raw" / citypersons.CITYSCAPES_ZIP

    problems = citypersons.fetch(cfg, root, online=True)  # the network drops half-way
    assert len(problems) == 1 and "the partial download is kept; the next run resumes it" in problems[0], problems
    kept = part.stat().st_size  # what requests had handed the downloader when the connection broke
    assert 0 < kept <= len(body) // 2 and part.read_bytes() == body[:kept]
    assert not zip_path.exists()

    assert citypersons.fetch(cfg, root, online=True) == []  # the next run
    assert zip_path.read_bytes() == body and not part.parent.exists()
    transfers = [(rng, sent) for path, rng, sent in server.log if path == PACKAGE]
    assert transfers == [(None, len(body) // 2),  # cut
                         (f"bytes={kept}-", len(body) - kept)]  # only the rest, asked for by Range
    assert server.logins == [(CITYSCAPES_USER, True)] * 2


def test_cityscapes_part_with_nothing_left_to_resume_is_discarded_then_downloaded_anew(
        tmp_path, demo_raw, small_cityscapes_zip, server, monkeypatch):
    """A run stopped after the transfer but before the md5 check leaves the whole file as the part;
    the site answers the resume with 416. That must not fail the same way on every run."""
    body = small_cityscapes_zip
    root = citypersons_root(tmp_path, demo_raw)
    cityscapes_site(server, body)
    for k, v in account().items():
        monkeypatch.setenv(k, v)
    cfg = config.load(CITYPERSONS, [f"dataset.cityscapes_url={server.url}"])
    part = root / "datasets/citypersons/.downloads" / citypersons.CITYSCAPES_ZIP
    part.parent.mkdir(parents=True)
    part.write_bytes(body)
    problems = citypersons.fetch(cfg, root, online=True)
    assert len(problems) == 1 and "would not resume the kept partial download; it was discarded" in problems[0]
    assert not part.exists()
    assert citypersons.fetch(cfg, root, online=True) == []
    assert (root / "datasets/citypersons/raw" / citypersons.CITYSCAPES_ZIP).read_bytes() == body
