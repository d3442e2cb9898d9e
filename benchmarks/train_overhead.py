"""The training stage's cost over a bare `yolo train` with identical arguments, on the demo data.

    python benchmarks/train_overhead.py [--pairs 5] [--epochs 10] [--fraction 0.25]

Runs interleaved pairs (stage then bare, bare then stage, ...) so drift in machine speed hits both
sides alike, takes each run's median epoch time from its results.csv, and prints the median of the
per-pair ratios stage/bare and their spread. Bar: median ratio <= 1.03. Exit code 1 if missed.
`--fraction` trains on that share of the demo train split (ultralytics' `fraction`, on both sides) to
keep 2 x pairs runs within minutes on a 2-core CPU.
"""
import argparse
import csv
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
BAR = 1.03


def epoch_times(results_csv: Path) -> list[float]:
    with open(results_csv) as f:
        cumulative = [float(row["time"]) for row in csv.DictReader(f, skipinitialspace=True)]
    return [b - a for a, b in zip([0.0] + cumulative, cumulative)]


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--pairs", type=int, default=5)
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--fraction", type=float, default=0.25)
    a = p.parse_args()

    from services.common import config
    cfg = config.load(ROOT / "configs" / "demo.yaml")
    t = cfg["train"]
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        env = {k: v for k, v in os.environ.items() if k != "PYTEST_CURRENT_TEST"}
        env["PIPELINE_ROOT"] = str(root)
        subprocess.run([sys.executable, "-m", "services.dataset", "--config", "configs/demo.yaml"], cwd=ROOT,
                       env=env, check=True, capture_output=True)
        # The bare run gets the same ultralytics settings (TensorBoard on, offline) the stage writes.
        from services.common import yolo_env
        yolo_env.prepare(root)
        env.update({k: os.environ[k] for k in ("YOLO_CONFIG_DIR", "YOLO_OFFLINE", "YOLO_AUTOINSTALL")})
        data = root / "datasets" / "demo" / "yolo" / "demo.yaml"
        bare_args = [f"model={t['model']}", f"data={data}", f"epochs={a.epochs}", f"imgsz={t['imgsz']}",
                     f"batch={t['batch']}", f"optimizer={t['optimizer']}", f"lr0={t['lr0']}",
                     f"warmup_epochs={t['warmup_epochs']}", f"amp={t['amp']}", f"seed={t['seed']}",
                     f"deterministic={t['deterministic']}", f"device={t['device']}", f"workers={t['workers']}",
                     f"patience={t['patience'] or 10**9}", f"fraction={a.fraction}", "val=True", "plots=True",
                     f"project={root / 'bare'}", "name=train", "exist_ok=True"]
        stage_cmd = [sys.executable, "-m", "services.fit", "--config", "configs/demo.yaml", "--fresh",
                     f"train.epochs={a.epochs}", f"train.extra={{fraction: {a.fraction}}}"]
        yolo = str(Path(sys.executable).parent / "yolo")

        def run(kind: str) -> float:
            if kind == "stage":
                cmd, csv_path = stage_cmd, root / "runs" / "demo" / "train" / "results.csv"
            else:
                shutil.rmtree(root / "bare", ignore_errors=True)
                cmd, csv_path = [yolo, "train", *bare_args], root / "bare" / "train" / "results.csv"
            t0 = time.perf_counter()
            proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
            if proc.returncode:
                sys.exit(f"{kind} run failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}")
            median = statistics.median(epoch_times(csv_path))
            print(f"  {kind:>5}: median epoch {median:.2f} s (whole command {time.perf_counter() - t0:.0f} s)",
                  flush=True)
            return median

        ratios = []
        for i in range(a.pairs):
            print(f"pair {i + 1}/{a.pairs}", flush=True)
            order = ("stage", "bare") if i % 2 == 0 else ("bare", "stage")
            times = {kind: run(kind) for kind in order}
            ratios.append(times["stage"] / times["bare"])
            print(f"  ratio stage/bare: {ratios[-1]:.3f}", flush=True)

    med = statistics.median(ratios)
    print(f"\nepoch-time ratio stage/bare over {a.pairs} interleaved pairs of {a.epochs} epochs "
          f"(demo, fraction {a.fraction}, {os.cpu_count()} cpus): median {med:.3f}, "
          f"spread {min(ratios):.3f}..{max(ratios):.3f}, stdev {statistics.pstdev(ratios):.3f}  "
          f"bar <= {BAR}: {'ok' if med <= BAR else 'MISSED'}")
    return 0 if med <= BAR else 1


if __name__ == "__main__":
    sys.exit(main())
