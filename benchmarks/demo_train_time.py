"""The demo training's time: `make fit` on configs/demo.yaml, as a user runs it, on this machine's CPU.

    python benchmarks/demo_train_time.py [--root DIR]

Builds the demo dataset in a scratch project root and runs the training stage on it
(`python -m services.fit --config configs/demo.yaml`), then reads the training time ultralytics logged
for the last epoch (results.csv `time`, seconds since training began). With --root DIR it trains
nothing and reads DIR/runs/demo/train/ instead (e.g. DIR=. after `make demo`). Bar: <= 300 s, every
configured epoch completed. Exit code 1 if missed (the tests check the demo's accuracy, not its time).
"""
import argparse
import csv
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
BAR_SECONDS = 300


def train(root: Path) -> float:
    """Dataset and training stages in `root`; the whole training command's seconds."""
    env = {k: v for k, v in os.environ.items() if k != "PYTEST_CURRENT_TEST"}
    env["PIPELINE_ROOT"] = str(root)
    for stage in ("dataset", "fit"):
        t0 = time.perf_counter()
        proc = subprocess.run([sys.executable, "-m", f"services.{stage}", "--config", "configs/demo.yaml"],
                              cwd=ROOT, env=env, capture_output=True, text=True)
        if proc.returncode:
            sys.exit(f"benchmark: the {stage} stage failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}")
    return time.perf_counter() - t0


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--root", help="a project root with a finished demo training: read it, train nothing")
    a = p.parse_args()
    from services.common import config
    epochs = config.load(ROOT / "configs" / "demo.yaml")["train"]["epochs"]
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(a.root).resolve() if a.root else Path(tmp)
        command = None if a.root else train(root)
        results = root / "runs" / "demo" / "train" / "results.csv"
        if not results.is_file():
            print(f"benchmark: no {results}; run `make demo` there first, or leave out --root")
            return 2
        with open(results) as f:
            rows = list(csv.DictReader(f, skipinitialspace=True))
        manifest_file = root / "artifacts" / "demo" / "train" / "manifest.json"
        stage_wall = json.loads(manifest_file.read_text())["wall_s"] if manifest_file.is_file() else None
    seconds = float(rows[-1]["time"]) if rows else float("inf")
    fast, complete = seconds <= BAR_SECONDS, len(rows) == epochs
    print(f"demo training ({os.cpu_count()} cpus{', read from ' + str(root) if a.root else ''}): "
          f"{len(rows)} of {epochs} epochs" + ("" if complete else "  MISSED (incomplete run)"))
    if stage_wall is not None or command is not None:
        print("  " + ", ".join(part for part in (
            f"training stage wall time {stage_wall:.0f} s" if stage_wall is not None else "",
            f"whole fit command {command:.0f} s" if command is not None else "") if part))
    print(f"training time (ultralytics, last epoch): {seconds:.0f} s  bar <= {BAR_SECONDS} s: "
          f"{'ok' if fast else 'MISSED'}")
    return 0 if fast and complete else 1


if __name__ == "__main__":
    sys.exit(main())
