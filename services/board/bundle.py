"""bundle.json, and the checks a run makes against it before it reads a frame: the output layout, the
board's SoC, its NPU cores, the model file and the version of the board's RKNN runtime."""
import json
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from . import yolo_core as core
from .errors import BadInput, LayoutError

NPU_CORES = {"rk3588": 3, "rk3576": 2}  # the others have one NPU core, which takes no core mask


@dataclass(frozen=True)
class Bundle:
    """What the conversion recorded about the model (bundle.json), and the folder it lies in."""
    folder: Path
    size: tuple[int, int]  # the model's input (h, w)
    layout: str
    platform: str
    toolkit_version: str
    manifest: dict  # all of bundle.json: the report copies parts of it


def load_bundle(folder: Path) -> Bundle:
    path = Path(folder) / "bundle.json"
    try:
        manifest = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise BadInput(f"cannot read {path} ({e}); copy the whole bundle folder from the same conversion "
                       f"(artifacts/<exp>/board/)") from e
    return Bundle(folder=Path(folder), size=tuple(manifest["imgsz_hw"]),
                  # bundles from before the layout was recorded had that one
                  layout=manifest.get("layout", "normalized"),
                  platform=manifest["platform"], toolkit_version=manifest["toolkit_version"], manifest=manifest)


def check_layout(layout: str, size: tuple[int, int], outputs=None) -> None:
    """The bundle's layout must be one this decode knows, and the model's outputs (when given) must
    have its shapes."""
    if layout not in core.LAYOUTS or layout == "standard":
        raise LayoutError(f"bundle.json names output layout {layout!r}, which this detect.py does not decode "
                          f"(it knows {', '.join(k for k in core.LAYOUTS if k != 'standard')}); copy the whole "
                          f"bundle folder from the same conversion (artifacts/<exp>/board/)")
    if outputs is not None:
        try:
            found = core.layout_of([np.shape(o) for o in outputs], size)
        except ValueError as e:
            found = str(e)
        if found != layout:
            raise LayoutError(f"the model's outputs do not have the {layout!r} layout bundle.json names ({found}); "
                              f"the .rknn and bundle.json come from different conversions: copy the whole bundle "
                              f"folder again")


def older_runtime_warning(sdk: str | None, built: str) -> str | None:
    """The NPU driver/runtime must be at least the toolkit version the model was built with. `sdk` is
    the version as rknn-toolkit-lite2's get_sdk_version says it (the first x.y.z in it is the
    runtime's); the warning to print when it is older than `built`, else None (also when `sdk` names
    no version: nothing to compare)."""
    match = re.search(r"(\d+)\.(\d+)\.(\d+)", str(sdk or ""))
    found = [int(x) for x in match.groups()] if match else []
    want = [int(x) for x in built.split(".")[:3]]
    if found and found < want:
        return (f"warning: the board's RKNN runtime is {'.'.join(map(str, found))} but the model was built with "
                f"rknn-toolkit2 {built}; update librknnrt.so to {built} or newer if results look wrong")
    return None


def board_platform(given: str | None, compatible_file: Path = Path("/proc/device-tree/compatible")):
    """The SoC this runs on: --platform, else the first rockchip,rkXXXX of /proc/device-tree/compatible
    (an RK3588S says rk3588s, which the toolkit calls rk3588). (name or None, where it came from, the raw list)."""
    if given:
        return given.lower(), "--platform", []
    try:
        compatible = [c for c in compatible_file.read_bytes().decode(errors="replace").split("\0") if c]
    except OSError:
        return None, None, []
    for c in compatible:
        match = re.match(r"rockchip,(r[kv]\d{4})", c)
        if match:
            return match.group(1), str(compatible_file), compatible
    return None, str(compatible_file), compatible


def check_platform(bundle: Bundle, soc: str | None, soc_from: str | None) -> None:
    """An .rknn runs only on the chip it was built for."""
    if soc and soc != bundle.platform:
        raise BadInput(f"this bundle was built for the {bundle.platform} (bundle.json) but this board is an "
                       f"{soc} ({soc_from}); build one for it (make convert ARGS=convert.platform={soc}) and "
                       f"copy that bundle")


def parse_cores(value: str, backend: str, platform: str) -> list[int]:
    """--cores -> the NPU cores to run a context on. `all` on a chip with fewer than three cores means
    all of its cores; the onnx backend has no cores to count (a context is a CPU thread)."""
    cores = [0, 1, 2] if value == "all" else [int(value)]
    available = NPU_CORES.get(platform, 1)
    if backend == "rknn" and max(cores) >= available:
        if value == "all":
            return list(range(available))
        raise BadInput(f"--cores {value}: the {platform} has {available} NPU core(s) "
                       f"(0{f'-{available - 1}' if available > 1 else ''}); use --cores "
                       f"{' or '.join(map(str, range(available)))} or all")
    return cores


def model_path(bundle: Bundle, backend: str, given: Path | None) -> Path:
    """--model, else the bundle's .rknn (--backend rknn) or the float .onnx it was built from (onnx)."""
    model = given
    if model is None:
        name = bundle.manifest["model"] if backend == "rknn" else bundle.manifest.get("onnx")
        if not name:
            raise BadInput("this bundle holds no .onnx model (built before it carried one); pass --model "
                           "artifacts/<exp>/models/<exp>.rknn-head.onnx")
        model = bundle.folder / name
    if not model.is_file():
        raise BadInput(f"{model} does not exist; copy the whole bundle folder, or pass --model")
    return model


def image_ids(gt: Path | None) -> dict:
    """--gt -> {file name: image id}, which --json needs to write COCO results ({} without --gt)."""
    if gt and not gt.is_file():
        raise BadInput(f"{gt} does not exist; --gt takes val_gt.json (datasets/<name>/yolo/) or val_coco.json")
    if not gt:
        return {}
    return {im.get("im_name") or im.get("file_name"): im["id"] for im in json.loads(gt.read_text())["images"]}
