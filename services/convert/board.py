"""The board bundle: everything an RK3588 needs to run the model, in artifacts/<exp>/board/.

    <exp>_int8_rk3588.rknn, <exp>.rknn-head.onnx, labels.txt, bundle.json, README.md
    detect.py   the entry point: `python3 detect.py SOURCE ...` calls runtime/detect.py's main
    runtime/    the board runtime (services/board/), with decode.py as runtime/yolo_core.py

The runtime is written to need nothing of the project but the decode (services/board/__init__.py);
so it is copied as it is, and decode.py goes in the place of yolo_core.py, which in the repository
only hands decode's names over.
"""
import json
import shutil
from pathlib import Path

import jinja2

from services import board as board_runtime
from services.common import decode, files, manifest, paths
from services.common.layout import Experiment
from services.common.log import info

TEMPLATES = Path(__file__).resolve().parent / "templates"
# Why this layout: the INT8 simulator against the float ONNX of the same head, measured with
# `python benchmarks/int8_fidelity.py layouts ROOT:demo` (README: "The RKNN head").
LAYOUT_MEASUREMENTS = {
    "setting": "demo val (60 images) at 256x256, seed 0, rknn-toolkit2 2.3.2 simulator, hybrid scores",
    "measures": ["AP50 ratio", "AP50-95 ratio", "MR-2 Reasonable gap pt", "median IoU of matched boxes",
                 "distinct scores INT8/float", "Spearman rho of matched scores"],
    "dfl": [0.998, 0.999, -0.24, 0.988, "1493/2263", 0.974],
    "distances": [1.001, 1.000, -0.24, 0.983, "1495/2263", 0.973],
    "normalized": [0.949, 0.850, 13.34, 0.875, "130/2263", 0.777],
}


def written_by_us(board: Path) -> bool:
    """Does board/ hold only what an earlier build wrote, unchanged (bundle.json lists each file with
    its sha256)? Then a new build replaces it; anything else in it (a user's results, an edited
    script) gets the folder moved aside instead."""
    listed = (files.read_json(board / "bundle.json") or {}).get("files")
    present = {p.relative_to(board).as_posix(): p for p in board.rglob("*")
               if (p.is_file() or p.is_symlink()) and "__pycache__" not in p.parts}  # Python's, when detect.py ran
    present.pop("bundle.json", None)
    if not isinstance(listed, dict):  # bundles from before the list: keep them
        return False
    return all(name in listed and files.sha256_file(p) == listed[name] for name, p in present.items())


def write_bundle(cfg: dict, model: Path, size, layout: str, toolkit_version: str, root: Path,
                 onnx: Path | None = None) -> Path:
    """onnx: the float RKNN-head ONNX the .rknn was built from (default: beside it, <exp>.rknn-head.onnx);
    detect.py runs it with `--backend onnx`, the same pipeline on a PC's CPU."""
    e, files_of = cfg["evaluate"], Experiment.of(cfg, root)
    exp, out = files_of.name, files_of.board
    onnx = onnx or files_of.rknn_head_onnx
    ours = out.is_dir() and written_by_us(out)
    with files.build_dir(out, same_inputs=ours) as build:
        shutil.copyfile(model, build.path / model.name)
        if onnx.is_file():
            shutil.copyfile(onnx, build.path / onnx.name)
        (build.path / "labels.txt").write_text("person\n")
        (build.path / "detect.py").write_text(render("bundle_detect.py.j2", platform=cfg["convert"]["platform"]))
        copy_runtime(build.path / "runtime")
        bundle = {"experiment": exp, "model": model.name, "imgsz_hw": list(size), "toolkit_version": toolkit_version,
                  "platform": cfg["convert"]["platform"], "dtype": cfg["convert"]["dtype"], "iou": e["iou"],
                  "max_det": e["max_det"], "category_ids": [1], "labels": ["person"],
                  # detect.py's --tiles default: the tiling the model was evaluated with
                  "tiles": e.get("tiles", 1), "tile_overlap": e.get("tile_overlap", 0.1),
                  "onnx": onnx.name if onnx.is_file() else None,
                  "layout": layout, "layout_means": decode.LAYOUTS[layout],
                  "layouts_measured": LAYOUT_MEASUREMENTS,
                  "input": f"(1, {size[0]}, {size[1]}, 3) uint8 RGB, letterboxed (grey 114); normalised inside",
                  "git": manifest.git_state(), "built": manifest.now()}
        (build.path / "README.md").write_text(render("bundle_README.md.j2", exp=exp, model=model.name, h=size[0],
                                                     w=size[1], tk=toolkit_version,
                                                     platform=cfg["convert"]["platform"], onnx=onnx.name))
        bundle["files"] = {p.relative_to(build.path).as_posix(): files.sha256_file(p)
                           for p in sorted(build.path.rglob("*")) if p.is_file()}
        (build.path / "bundle.json").write_text(json.dumps(bundle, indent=2) + "\n")
    if build.moved_aside:
        info("convert", f"{paths.rel(out, root)} held files the convert stage did not write; moved it aside to "
                        f"{paths.rel(build.moved_aside, root)}")
    return out


def copy_runtime(dest: Path) -> None:
    """The board runtime as the package `dest` (a bundle's runtime/): services/board/ as it is, but
    for yolo_core.py, which becomes a copy of decode.py, the very letterbox, decode and NMS the
    simulator evaluation used."""
    dest.mkdir(parents=True)
    for p in sorted(Path(board_runtime.__file__).parent.glob("*.py")):
        if p.name != "yolo_core.py":
            shutil.copyfile(p, dest / p.name)
    shutil.copyfile(decode.__file__, dest / "yolo_core.py")


def render(template: str, **values) -> str:
    """One of templates/ filled in; a value it names and is not given is an error, not a blank."""
    env = jinja2.Environment(loader=jinja2.FileSystemLoader(TEMPLATES), undefined=jinja2.StrictUndefined,
                             keep_trailing_newline=True, autoescape=False)
    return env.get_template(template).render(**values)
