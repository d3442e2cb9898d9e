"""What an input size costs small pedestrians, from the real CityPersons annotation files.

    python benchmarks/resolution.py [--annotations ../shared/data/citypersons] [--json out.json]

For each network input (h, w) a 2048x1024 Cityscapes frame is letterboxed into, the share of the
ground truths of the official miss-rate setups (Reasonable, All; pedestrians only, the boxes the
metric counts) whose height falls below 16 and 32 input pixels: a stride-8 head sees a 16-px person
as two cells. Beside it, the NPU time per frame as an estimate: rknn_model_zoo's 60 FPS for YOLO11n
INT8 at 640x640 on one RK3588 core, scaled by pixel count (the simulator gives no timing; a board
does: see the board bundle's detect.py).
"""
import argparse
import json
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from services.common.log import table  # noqa: E402
from services.dataset.citypersons import read_mat  # noqa: E402
from services.evaluate.miss_rate import SETUPS  # noqa: E402

FRAME_HW = (1024, 2048)
SIZES = [(640, 640), (512, 1024), (640, 1280), (1024, 2048)]
ZOO_FPS_640 = 60.0  # rknn_model_zoo, yolo11n INT8, 640x640, one RK3588 NPU core
PEDESTRIAN = 1


def heights_and_visibility(mat: Path, split: str) -> tuple[np.ndarray, np.ndarray]:
    """Full-body heights and visible fractions of every pedestrian box in one .mat file."""
    boxes = np.concatenate([r["bbs"] for r in read_mat(mat, split)])
    boxes = boxes[boxes[:, 0] == PEDESTRIAN]
    full = boxes[:, 3] * boxes[:, 4]
    visible = boxes[:, 8] * boxes[:, 9]
    return boxes[:, 4].astype(float), np.where(full > 0, visible / np.maximum(full, 1), 0.0)


def rows_for(heights: np.ndarray, vis: np.ndarray) -> list[dict]:
    out = []
    for h, w in SIZES:
        scale = min(h / FRAME_HW[0], w / FRAME_HW[1])
        row = {"input_hw": [h, w], "scale": scale,
               "npu_ms_estimate": round(1000 / ZOO_FPS_640 * (h * w) / (640 * 640), 1)}
        for setup in ("Reasonable", "All"):
            (h_lo, h_hi), (v_lo, v_hi) = SETUPS[setup]
            keep = (heights >= h_lo) & (heights <= h_hi) & (vis >= v_lo) & (vis <= v_hi)
            scaled = heights[keep] * scale
            row[setup] = {"boxes": int(keep.sum()), "below_16px": float(np.mean(scaled < 16)),
                          "below_32px": float(np.mean(scaled < 32))}
        out.append(row)
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--annotations", default=str(ROOT.parent / "shared" / "data" / "citypersons"),
                   help="the folder holding anno_train.mat and anno_val.mat")
    p.add_argument("--json", help="also write the table here")
    a = p.parse_args(argv)
    folder = Path(a.annotations)
    if not (folder / "anno_val.mat").is_file():
        print(f"resolution: error: no anno_val.mat in {folder}; give --annotations DIR", file=sys.stderr)
        return 2
    result = {}
    for split in ("val", "train"):
        if (folder / f"anno_{split}.mat").is_file():
            result[split] = rows_for(*heights_and_visibility(folder / f"anno_{split}.mat", split))
    for split, rows in result.items():
        print(table(["input h x w", "scale", "Reasonable boxes", "R < 16 px", "R < 32 px", "All boxes",
                     "All < 16 px", "All < 32 px", "NPU ms (estimate)"],
                    [[f"{r['input_hw'][0]}x{r['input_hw'][1]}", f"{r['scale']:.3f}",
                      r["Reasonable"]["boxes"], f"{100 * r['Reasonable']['below_16px']:.1f} %",
                      f"{100 * r['Reasonable']['below_32px']:.1f} %", r["All"]["boxes"],
                      f"{100 * r['All']['below_16px']:.1f} %", f"{100 * r['All']['below_32px']:.1f} %",
                      f"{r['npu_ms_estimate']:.1f}"] for r in rows],
                    title=f"\nCityPersons {split}: ground-truth heights after letterboxing 2048x1024 into the input"))
    print(f"\nNPU ms: an estimate, {ZOO_FPS_640:.0f} FPS at 640x640 (rknn_model_zoo, yolo11n INT8, one core) "
          "scaled by pixel count; not a measurement")
    if a.json:
        Path(a.json).write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
