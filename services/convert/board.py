"""The board bundle: everything an RK3588 needs to run the model, in artifacts/<exp>/board/."""
import json
import shutil
from pathlib import Path

from services.common import decode, files, manifest, paths
from services.common.log import info

HERE = Path(__file__).resolve().parent
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
    present = {str(p.relative_to(board)): p for p in board.rglob("*") if p.is_file() or p.is_symlink()}
    present.pop("bundle.json", None)
    if not isinstance(listed, dict):  # bundles from before the list: keep them
        return False
    return all(name in listed and files.sha256_file(p) == listed[name] for name, p in present.items())


def write_bundle(cfg: dict, model: Path, size, layout: str, toolkit_version: str, root: Path,
                 onnx: Path | None = None) -> Path:
    """onnx: the float RKNN-head ONNX the .rknn was built from (default: beside it, <exp>.rknn-head.onnx);
    detect.py runs it with `--backend onnx`, the same pipeline on a PC's CPU."""
    e, exp = cfg["evaluate"], cfg["experiment"]
    out = paths.artifacts_dir(exp, root) / "board"
    onnx = onnx or model.parent / f"{exp}.rknn-head.onnx"
    ours = out.is_dir() and written_by_us(out)
    with files.build_dir(out, same_inputs=ours) as build:
        shutil.copyfile(model, build.path / model.name)
        if onnx.is_file():
            shutil.copyfile(onnx, build.path / onnx.name)
        (build.path / "labels.txt").write_text("person\n")
        shutil.copyfile(HERE / "board_detect.py", build.path / "detect.py")
        # the very letterbox/decode/NMS the simulator evaluation used
        shutil.copyfile(decode.__file__, build.path / "yolo_core.py")
        bundle = {"experiment": exp, "model": model.name, "imgsz_hw": list(size), "toolkit_version": toolkit_version,
                  "platform": cfg["convert"]["platform"], "dtype": cfg["convert"]["dtype"], "iou": e["iou"],
                  "max_det": e["max_det"], "category_ids": [1], "labels": ["person"],
                  "onnx": onnx.name if onnx.is_file() else None,
                  "layout": layout, "layout_means": decode.LAYOUTS[layout],
                  "layouts_measured": LAYOUT_MEASUREMENTS,
                  "input": f"(1, {size[0]}, {size[1]}, 3) uint8 RGB, letterboxed (grey 114); normalised inside",
                  "git": manifest.git_state(), "built": manifest.now()}
        (build.path / "README.md").write_text(README.format(exp=exp, model=model.name, h=size[0], w=size[1],
                                                            tk=toolkit_version, platform=cfg["convert"]["platform"],
                                                            onnx=onnx.name))
        bundle["files"] = {p.name: files.sha256_file(p) for p in sorted(build.path.iterdir())}
        (build.path / "bundle.json").write_text(json.dumps(bundle, indent=2) + "\n")
    if build.moved_aside:
        info("convert", f"{paths.rel(out, root)} held files the convert stage did not write; moved it aside to "
                        f"{paths.rel(build.moved_aside, root)}")
    return out


README = """# {exp} on the {platform} NPU

Built with rknn-toolkit2 {tk}; input {h}x{w} (letterboxed), INT8 unless the file name says fp16.
`detect.py` decodes exactly as the simulator evaluation that produced ../metrics/rknn.json.

## On the board (Debian/Ubuntu image with the Rockchip NPU driver)

```bash
# once: the runtime library and the Python runtime, both {tk} (or newer)
#   librknnrt.so  -> /usr/lib/librknnrt.so   (rknn-toolkit2 repository, rknpu2/runtime/Linux/librknn_api/aarch64/)
pip3 install rknn-toolkit-lite2=={tk} opencv-python-headless numpy
# copy this folder to the board, then:
python3 detect.py street.jpg --out results/          # draws boxes, prints the latency of each stage
python3 detect.py images/ --out results/             # a folder
python3 detect.py video.mp4 --out frames/            # a video, frames in order
python3 detect.py video.mp4 --cores 0 --quiet        # one context on NPU core 0: the latency of one core
python3 detect.py val/images/ --conf 0.001 --json board_results.json --gt val_gt.json
```

`--cores all` (the default) loads three contexts, one bound to each NPU core, and runs them on
consecutive frames; reading, pre-processing (letterbox) and post-processing (decode, NMS) run in
threads of their own, and results come out in frame order. At the end detect.py prints each
stage's latency and the throughput (mean, p50, p95) and writes them to board_report.json (`--report`),
with the cores, the model, the frame count and the board's platform, for the report on the PC.

The last command writes COCO results for the CityPersons val images (copy `val/images/` and
`val_gt.json` from datasets/citypersons/yolo/). Score them on a PC with the project's evaluator to
compare the board with the simulator. `detect.py` warns when the board's runtime is older than {tk},
and refuses a bundle built for another chip (it reads /proc/device-tree/compatible; `--platform`
says it where that file does not).

On a PC, the same script runs the same pipeline on the CPU with the float ONNX model the .rknn was
built from: `python3 detect.py images/ --backend onnx` (onnxruntime, one CPU thread per context).

Files: {model} (the model), {onnx} (the float model it was built from), labels.txt, detect.py,
yolo_core.py (letterbox, decode, NMS), bundle.json (input size, outputs, toolkit version, commit).
"""
