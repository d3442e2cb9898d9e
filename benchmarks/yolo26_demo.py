"""YOLO26n against YOLO11n on the demo, every format: does YOLO26n learn the demo as well, and does
its INT8 model in the simulator keep its float accuracy?

    python benchmarks/yolo26_demo.py [--root DIR]

Runs `make train EXP=demo` and `make train EXP=demo-yolo26` (configs/demo.yaml: 16 epochs;
configs/demo-yolo26.yaml: 32 epochs) in a scratch project root, about 13 minutes on 2 CPU cores, then
prints val AP50 for pt, onnx, onnx-rknn-head and rknn. With --root DIR it trains nothing and reads
DIR/artifacts/demo{,-yolo26}/metrics/ (e.g. DIR=. after both runs). The test suite runs the YOLO26
chain at a few epochs and checks what does not depend on accuracy (layouts, parity, the board's
decode); the accuracy bars are here:
  - YOLO26n pt and onnx AP50 >= YOLO11n's - 0.05 (it learns the demo about as well)
  - YOLO26n rknn AP50 >= 0.97 x its float onnx-rknn-head AP50 (INT8 holds, as for YOLO11n)
  - YOLO26n |pt - onnx| <= 0.005 and |onnx-rknn-head - onnx| <= 0.002 (the exports agree)
Exit code 1 if a bar is missed.
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FORMATS = ("pt", "onnx", "onnx-rknn-head", "rknn")


def train(root: Path, exp: str) -> None:
    env = {k: v for k, v in os.environ.items() if k != "PYTEST_CURRENT_TEST"}
    proc = subprocess.run(["make", "--no-print-directory", "train", f"EXP={exp}"], cwd=ROOT,
                          env={**env, "PIPELINE_ROOT": str(root)}, capture_output=True, text=True)
    if proc.returncode:
        sys.exit(f"benchmark: make train EXP={exp} failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}")


def ap50(root: Path, exp: str) -> dict:
    out = {}
    for fmt in FORMATS:
        f = root / "artifacts" / exp / "metrics" / f"{fmt}.json"
        out[fmt] = json.loads(f.read_text())["sets"]["val"]["coco"]["AP50"] if f.is_file() else None
    return out


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--root", help="a project root where both experiments ran: read it, train nothing")
    a = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(a.root).resolve() if a.root else Path(tmp)
        if not a.root:
            for exp in ("demo", "demo-yolo26"):
                train(root, exp)
        y11, y26 = ap50(root, "demo"), ap50(root, "demo-yolo26")
    missing = [f"{exp} {fmt}" for exp, got in (("demo", y11), ("demo-yolo26", y26)) for fmt, v in got.items()
               if v is None and not (exp == "demo" and fmt != "pt" and fmt != "onnx")]
    if missing:
        print(f"benchmark: no metrics for {', '.join(missing)} under {root}; run `make train` there first")
        return 2
    print(f"demo val AP50 ({os.cpu_count()} cpus)")
    print(f"{'model':<10}" + "".join(f"{fmt:>16}" for fmt in FORMATS))
    for name, got in (("YOLO11n", y11), ("YOLO26n", y26)):
        print(f"{name:<10}" + "".join(f"{'-' if v is None else f'{v:.3f}':>16}" for v in got.values()))
    bars = [
        ("YOLO26n pt >= YOLO11n pt - 0.05", y26["pt"] >= y11["pt"] - 0.05),
        ("YOLO26n onnx >= YOLO11n onnx - 0.05", y26["onnx"] >= y11["onnx"] - 0.05),
        ("YOLO26n rknn >= 0.97 x onnx-rknn-head", y26["rknn"] >= 0.97 * y26["onnx-rknn-head"]),
        ("YOLO26n |pt - onnx| <= 0.005", abs(y26["pt"] - y26["onnx"]) <= 0.005),
        ("YOLO26n |onnx-rknn-head - onnx| <= 0.002", abs(y26["onnx-rknn-head"] - y26["onnx"]) <= 0.002),
    ]
    for what, ok in bars:
        print(f"  bar {what}: {'ok' if ok else 'MISSED'}")
    return 0 if all(ok for _, ok in bars) else 1


if __name__ == "__main__":
    sys.exit(main())
