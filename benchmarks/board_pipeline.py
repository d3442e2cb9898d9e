"""Does the board pipeline scale with its inference contexts? The bundle's detect.py, as a user runs
it, on one video, with one context (`--cores 0`) and with three (`--cores all`), on this machine's
CPU: `--backend onnx` runs the bundle's ONNX model with onnxruntime, one CPU thread per context,
where the board runs the .rknn on one NPU core per context. Same code otherwise: reader, OpenCV
pre-processing, the shared decode and NMS, frames in order.

    python benchmarks/board_pipeline.py [BOARD] [--source VIDEO|FOLDER] [--frames 240] [--frame-size 2048x1024]

BOARD is a bundle folder (default: artifacts/demo/board under $PIPELINE_ROOT or the project). Without
--source, a video of --frames synthetic street-like frames of --frame-size (a 1280x720 camera stream)
is written to a scratch folder first (MJPG: OpenCV decodes it anywhere). A video is decoded by one
thread, in order: with a small model the decode can be the slowest stage (2048x1024 MJPG: ~13 ms per
frame on the development machine, which caps the demo model's three contexts at ~75 frames/s);
the read column shows it. A folder's images are decoded by the pre-processing threads, in parallel.

The bar: three contexts give >= 2x the frames/s of one, on a machine with >= 3 free cores (each
context needs one; the reader, pre- and post-processing threads need a little more). With fewer
cores the figure is printed and the bar is not applied. Exit 1 when the bar applies and is missed.
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import cv2
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from services.common.log import table  # noqa: E402

BAR = 2.0
TRAIN_PY = Path(os.environ.get("VENV", ROOT / ".venv")) / "train" / "bin" / "python"


def synthetic_video(path: Path, frames: int, size: tuple[int, int]) -> Path:
    """Blurred noise with upright blocks: content does not change the model's cost, the frame size
    changes the reader's and the letterbox's."""
    w, h = size
    rng = np.random.default_rng(0)
    base = cv2.GaussianBlur(rng.integers(0, 255, (h, w, 3), dtype=np.uint8), (0, 0), 5)
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 30, (w, h))
    for i in range(frames):
        frame = np.roll(base, 8 * i, axis=1)
        for k in range(6):
            x = (150 + 300 * k + 5 * i) % (w - 60)
            cv2.rectangle(frame, (x, h // 2 - 150), (x + 60, h // 2 + 60), (40 * k, 90, 200 - 30 * k), -1)
        writer.write(frame)
    writer.release()
    return path


def run(board: Path, source: Path, cores: str, work: Path, python: Path) -> dict:
    out = work / f"cores-{cores}"
    out.mkdir(parents=True, exist_ok=True)
    cmd = [str(python), str(board / "detect.py"), str(source), "--backend", "onnx", "--cores", cores, "--quiet",
           "--report", str(out / "board_report.json")]
    proc = subprocess.run(cmd, cwd=out, capture_output=True, text=True)
    if proc.returncode:
        sys.exit(f"{' '.join(cmd)} failed:\n{proc.stderr[-2000:]}")
    return json.loads((out / "board_report.json").read_text())


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    default_root = Path(os.environ.get("PIPELINE_ROOT", ROOT))
    p.add_argument("board", type=Path, nargs="?", default=default_root / "artifacts" / "demo" / "board")
    p.add_argument("--source", type=Path, help="a video or a folder of images (default: a synthetic video)")
    p.add_argument("--frames", type=int, default=240)
    p.add_argument("--frame-size", default="1280x720", help="WxH of the synthetic video")
    p.add_argument("--python", type=Path, default=TRAIN_PY if TRAIN_PY.is_file() else Path(sys.executable),
                   help="the interpreter that runs detect.py (needs onnxruntime and OpenCV)")
    a = p.parse_args()
    if not (a.board / "detect.py").is_file():
        sys.exit(f"{a.board} is not a board bundle (no detect.py); `make demo` builds artifacts/demo/board")
    with tempfile.TemporaryDirectory(prefix="board-pipeline-") as tmp:
        work = Path(tmp)
        source = a.source
        if source is None:
            w, h = (int(v) for v in a.frame_size.lower().split("x"))
            print(f"writing a {a.frames}-frame {w}x{h} video ...", flush=True)
            source = synthetic_video(work / "street.avi", a.frames, (w, h))
        reports = {cores: run(a.board, source, cores, work, a.python) for cores in ("0", "all")}

    rows = []
    for cores, r in reports.items():
        lat, fps = r["latency_ms"], r["throughput_fps"]
        rows.append([f"{r['contexts']} (cores {','.join(map(str, r['cores']))})", r["frames"],
                     f"{fps['mean']:.1f}", f"{fps['p50']:.1f}", f"{fps['p95']:.1f}",
                     *(f"{lat[k]['p50']:.1f}" for k in ("read", "pre", "npu", "post", "end_to_end"))])
    one, three = reports["0"], reports["all"]
    print(table(["contexts", "frames", "fps mean", "fps p50", "fps p95", "read ms", "pre ms", "infer ms", "post ms",
                 "end-to-end ms"], rows,
                title=f"\nboard pipeline, --backend onnx ({one['runtime']}, one thread per context), "
                      f"{one['model']} at {'x'.join(map(str, one['bundle']['imgsz_hw']))}, {one['source_kind']}; "
                      f"ms columns are p50"))
    ratio = three["throughput_fps"]["mean"] / one["throughput_fps"]["mean"]
    cpus = len(os.sched_getaffinity(0))
    applies = cpus >= 3
    verdict = ("ok" if ratio >= BAR else "MISSED") if applies else \
        f"not applied: this machine gives this process {cpus} core(s), the bar needs >= 3"
    print(f"\nthroughput, 3 contexts / 1 context: {ratio:.2f}x (bar >= {BAR:.1f}x on >= 3 cores): {verdict}")
    return 1 if applies and ratio < BAR else 0


if __name__ == "__main__":
    sys.exit(main())
