"""What a run measured: latency statistics per stage, throughput, the summary table detect.py prints,
and files written so that a board losing power never leaves half of one."""
import os
from pathlib import Path

import numpy as np

STAGE_NAMES = {"read": "read (decode the image/frame)", "pre": "pre-processing (letterbox)",
               "npu": "NPU (inference)", "post": "post-processing (decode, NMS)", "write": "write (print, draw, save)",
               "end_to_end": "end to end (read -> written)"}


def stats(values) -> dict:
    v = np.asarray(values, dtype=np.float64)
    if not v.size:
        return {"mean": None, "p50": None, "p95": None}
    return {"mean": round(float(v.mean()), 3), "p50": round(float(np.percentile(v, 50)), 3),
            "p95": round(float(np.percentile(v, 95)), 3)}


def throughput(done_times: list[float], started: float, finished: float, workers: int) -> dict:
    """Frames per second: mean over the whole run (frames / wall time, from the first read to the last
    result written), and p50 / p95 over rounds of `workers` consecutive results (single intervals
    would be meaningless: contexts finish in bursts). p95 is the rate of the slowest 5% of rounds."""
    frames = len(done_times)
    wall = finished - started
    out = {"mean": round(frames / wall, 3) if frames and wall > 0 else None, "p50": None, "p95": None}
    k = max(1, workers)
    if frames > k:
        t = np.asarray(done_times)
        per_frame = (t[k:] - t[:-k]) / k
        per_frame = per_frame[per_frame > 0]
        if per_frame.size:
            out["p50"] = round(float(1 / np.percentile(per_frame, 50)), 3)
            out["p95"] = round(float(1 / np.percentile(per_frame, 95)), 3)
    return out


def summary(report: dict) -> str:
    """board_report.json's latencies and throughput as the table detect.py prints at the end."""
    def cell(value) -> str:
        return f"{value:.1f}" if value is not None else "-"

    lat, fps = report["latency_ms"], report["throughput_fps"]
    rows = [[STAGE_NAMES[k], *(cell(lat[k][s]) for s in ("mean", "p50", "p95"))] for k in STAGE_NAMES]
    rows.append(["throughput (frames/s)", *(cell(fps[s]) for s in ("mean", "p50", "p95"))])
    headers = ["ms per frame", "mean", "p50", "p95"]
    widths = [max(len(r[i]) for r in [headers] + rows) for i in range(4)]

    def line(row) -> str:  # the first column to the left, the numbers to the right
        return "  ".join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(row, widths)))

    title = (f"\n{report['frames']} frame(s), {report['backend']} backend, {len(report['cores'])} context(s) on "
             f"core(s) {', '.join(map(str, report['cores']))}, {report['model']}")
    return "\n".join([title, line(headers), "  ".join("-" * w for w in widths)] + [line(r) for r in rows])


def write_atomically(path: Path, text: str) -> None:
    """Readers see the old file or the new one, never half of one (a board can lose power any time)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        tmp.write_text(text)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
