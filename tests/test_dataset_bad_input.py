"""Bad input: exit code != 0, one actionable line, nothing half-written, nothing deleted."""
import json
import shutil
import zipfile
from pathlib import Path

import numpy as np
import scipy.io

from tests.helpers import ROOT, demo_root, one_error, run_module

DEMO = str(ROOT / "configs" / "demo.yaml")


def stage(root: Path, *extra):
    return run_module("dataset", ["--config", DEMO, *extra], root)


def leftovers(root: Path) -> list[str]:
    """Temporary or partial folders a failed run must not leave behind."""
    return [str(p) for p in (root / "datasets").rglob("*") if ".tmp-" in p.name or ".partial-" in p.name]


def test_missing_mat_names_the_file_the_source_and_the_place(tmp_path, demo_raw):
    root = demo_root(tmp_path, demo_raw)
    (root / "datasets/demo/raw/anno_val.mat").unlink()
    line = one_error(stage(root))
    assert "datasets/demo/raw/anno_val.mat" in line and "github.com/cvgroup-njust/CityPersons" in line
    assert "put it in datasets/demo/raw/" in line
    assert not (root / "datasets/demo/yolo").exists() and not leftovers(root)


def test_missing_images_say_cityscapes_needs_an_account(tmp_path, demo_raw):
    root = demo_root(tmp_path, demo_raw)
    shutil.rmtree(root / "datasets/demo/raw/leftImg8bit")
    line = one_error(stage(root))
    assert "leftImg8bit_trainvaltest.zip" in line and "cityscapes-dataset.com" in line and "account" in line


def test_mat_without_the_expected_key(tmp_path, demo_raw):
    root = demo_root(tmp_path, demo_raw)
    scipy.io.savemat(root / "datasets/demo/raw/anno_train.mat", {"something_else": np.zeros(3)})
    line = one_error(stage(root))
    assert "no 'anno_train_aligned'" in line and "something_else" in line
    assert not (root / "datasets/demo/yolo").exists()


def test_not_a_mat_file(tmp_path, demo_raw):
    root = demo_root(tmp_path, demo_raw)
    (root / "datasets/demo/raw/anno_train.mat").write_text("<html>404 Not Found</html>")
    line = one_error(stage(root))
    assert "anno_train.mat is not a readable .mat file" in line and "github.com" in line


def test_absent_image_is_named_and_counted(tmp_path, demo_raw):
    root = demo_root(tmp_path, demo_raw)
    victims = sorted((root / "datasets/demo/raw/leftImg8bit/val").rglob("*.png"))[:3]
    for v in victims:
        v.unlink()
    line = one_error(stage(root))
    assert "3 image(s) listed in the annotations are absent" in line and victims[0].name in line
    assert not (root / "datasets/demo/yolo").exists() and not leftovers(root)


def test_unreadable_png_is_skipped_counted_and_reported(tmp_path, demo_raw):
    root = demo_root(tmp_path, demo_raw)
    victim = sorted((root / "datasets/demo/raw/leftImg8bit/val").rglob("*.png"))[0]
    victim.write_bytes(victim.read_bytes()[:500])  # a truncated download
    proc = stage(root)
    assert proc.returncode == 0, proc.stderr
    assert "skipped 1 unreadable PNG(s)" in proc.stderr and victim.name in proc.stderr
    m = json.loads((root / "datasets/demo/yolo/manifest.json").read_text())
    assert m["counts"]["val"]["unreadable"] == 1 and m["counts"]["val"]["images"] == 59
    gt = json.loads((root / "datasets/demo/yolo/val_gt.json").read_text())
    assert victim.name not in {i["im_name"] for i in gt["images"]} and len(gt["images"]) == 59


def test_up_to_date_output_is_reused_and_a_stale_one_moved_aside(tmp_path, demo_raw):
    root = demo_root(tmp_path, demo_raw)
    out = root / "datasets/demo/yolo"
    assert stage(root).returncode == 0
    first = json.loads((out / "manifest.json").read_text())

    again = stage(root)
    assert again.returncode == 0 and "is up to date" in again.stdout and "FORCE=1" in again.stdout
    assert json.loads((out / "manifest.json").read_text())["started"] == first["started"]

    # a changed policy rebuilds, and the old output is moved aside, not deleted
    changed = stage(root, "dataset.calib_images=5")
    assert changed.returncode == 0 and "the previous output was built from other inputs or policy " \
        "(dataset_config.calib_images); moved it aside" in changed.stdout
    assert len((out / "calib.txt").read_text().splitlines()) == 5
    aside = [p for p in (root / "datasets/demo").iterdir() if p.name.startswith("yolo.old-")]
    assert len(aside) == 1 and json.loads((aside[0] / "manifest.json").read_text())["started"] == first["started"]

    # changed inputs rebuild too: the same annotations written again give a .mat with other bytes
    mat = root / "datasets/demo/raw/anno_val.mat"
    scipy.io.savemat(mat, {k: v for k, v in scipy.io.loadmat(mat).items() if not k.startswith("__")})
    rebuilt = stage(root, "dataset.calib_images=5")
    assert rebuilt.returncode == 0 and "up to date" not in rebuilt.stdout
    assert "other inputs or policy (sha256.anno_val.mat); moved it aside" in rebuilt.stdout

    # and FORCE=1 (--force) rebuilds what is up to date: with the very same inputs it replaces the
    # output, and no copy of identical output piles up
    before = sorted(p.name for p in (root / "datasets/demo").iterdir())
    forced = stage(root, "dataset.calib_images=5", "--force")
    assert forced.returncode == 0 and "up to date" not in forced.stdout and "moved" not in forced.stdout
    assert "rebuilt datasets/demo/yolo from unchanged inputs and policy; the previous output was replaced" in forced.stdout
    assert sorted(p.name for p in (root / "datasets/demo").iterdir()) == before
    assert json.loads((out / "manifest.json").read_text())["moved_aside"] is None


def test_a_failed_rebuild_leaves_the_previous_output_intact(tmp_path, demo_raw):
    root = demo_root(tmp_path, demo_raw)
    out = root / "datasets/demo/yolo"
    assert stage(root).returncode == 0
    before = (out / "manifest.json").read_text()
    next(iter(sorted((root / "datasets/demo/raw/leftImg8bit/train").rglob("*.png")))).unlink()
    one_error(stage(root, "--force"))
    assert (out / "manifest.json").read_text() == before and not leftovers(root)


def _zip_demo(raw: Path, zip_path: Path, with_test=True):
    with zipfile.ZipFile(zip_path, "w", compression=zipfile.ZIP_STORED) as z:
        for p in sorted((raw / "leftImg8bit").rglob("*.png")):
            z.write(p, str(p.relative_to(raw)))
        if with_test:  # the real zip also holds test images, which have no annotations
            z.writestr("leftImg8bit/test/berlin/berlin_000000_000019_leftImg8bit.png", b"x")
        z.writestr("README", "Cityscapes")


def test_zip_is_extracted_train_and_val_only(tmp_path, demo_raw):
    root = demo_root(tmp_path, demo_raw)
    raw = root / "datasets/demo/raw"
    _zip_demo(raw, raw / "leftImg8bit_trainvaltest.zip")
    shutil.rmtree(raw / "leftImg8bit")
    proc = stage(root)
    assert proc.returncode == 0, proc.stderr
    assert sorted(p.name for p in (raw / "leftImg8bit").iterdir()) == ["train", "val"]
    m = json.loads((root / "datasets/demo/yolo/manifest.json").read_text())
    assert len(m["fingerprint"]["sha256"]["leftImg8bit_trainvaltest.zip"]) == 64
    assert (raw / "leftImg8bit_trainvaltest.zip").is_file()  # the download itself is kept
    cache = json.loads((root / "datasets/demo/.checksums.json").read_text())
    assert list(cache.values())[0]["sha256"] == m["fingerprint"]["sha256"]["leftImg8bit_trainvaltest.zip"]


def test_truncated_zip_is_refused_and_nothing_extracted(tmp_path, demo_raw):
    root = demo_root(tmp_path, demo_raw)
    raw = root / "datasets/demo/raw"
    zip_path = raw / "leftImg8bit_trainvaltest.zip"
    _zip_demo(raw, zip_path)
    zip_path.write_bytes(zip_path.read_bytes()[: zip_path.stat().st_size // 2])
    shutil.rmtree(raw / "leftImg8bit")
    line = one_error(stage(root))
    assert "leftImg8bit_trainvaltest.zip is corrupt or truncated" in line and "cityscapes-dataset.com" in line
    assert not (raw / "leftImg8bit").exists() and not leftovers(root)
    assert not (root / "datasets/demo/yolo").exists()
