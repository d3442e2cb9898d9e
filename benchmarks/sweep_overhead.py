"""What the sweep engine costs: a sweep's wall time over the sum of the same trials run one by one.

    python benchmarks/sweep_overhead.py [--seeds 2] [--epochs 2] [--work /tmp/sweep-overhead]

The trials are the demo (configs/demo.yaml) with train.seed = 0, 1, ... and a few epochs, each the
whole chain. One by one: `make train EXP=demo ARGS="train.seed=S ..."`, each in its own project root
(the dataset hard-linked from a first build, so every trial finds it up to date, as in the sweep).
The sweep: the same trials in one root, `python -m services.sweep` on a local Ray instance with
`trials_at_once: 1`, so Ray's start, scheduling and bookkeeping are what differs.
Bar: sweep / one-by-one <= 1.05 on this machine. Exit 1 when missed.
"""
import argparse
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
VENV = Path(os.environ.get("VENV", ROOT / ".venv"))
BAR = 1.05


def timed(cmd: list, root: Path, log: Path) -> float:
    env = {**os.environ, "PIPELINE_ROOT": str(root), "RUNNER": "local", "VENV": str(VENV)}
    t0 = time.perf_counter()
    with log.open("w") as f:
        code = subprocess.run(cmd, cwd=ROOT, env=env, stdout=f, stderr=subprocess.STDOUT).returncode
    seconds = time.perf_counter() - t0
    if code:
        sys.exit(f"{' '.join(map(str, cmd))} failed (exit {code}); see {log}")
    return seconds


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seeds", type=int, default=2, help="trials: train.seed = 0 .. seeds-1")
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--work", type=Path, default=Path("/tmp/sweep-overhead"))
    a = p.parse_args()
    shutil.rmtree(a.work, ignore_errors=True)
    base = a.work / "dataset"
    base.mkdir(parents=True)
    print("building the demo dataset once ...", flush=True)
    timed(["make", "--no-print-directory", "dataset", "EXP=demo"], base, a.work / "dataset.log")

    def root_with_dataset(name: str) -> Path:
        root = a.work / name
        shutil.copytree(base / "datasets", root / "datasets", copy_function=os.link)
        return root

    one_by_one = []
    for seed in range(a.seeds):
        root = root_with_dataset(f"make-train-s{seed}")
        args = f"ARGS=train.seed={seed} train.epochs={a.epochs}"
        print(f"make train EXP=demo {args} ...", flush=True)
        one_by_one.append(timed(["make", "--no-print-directory", "train", "EXP=demo", args], root,
                                a.work / f"make-train-s{seed}.log"))

    spec = a.work / "overhead.yaml"
    spec.write_text(f"base: demo\nseeds: {list(range(a.seeds))}\noverrides: [train.epochs={a.epochs}]\n"
                    "trials_at_once: 1\n")
    print("the same trials as a sweep on local Ray ...", flush=True)
    swept = timed([str(VENV / "train" / "bin" / "python"), "-m", "services.sweep", str(spec)],
                  root_with_dataset("sweep"), a.work / "sweep.log")

    ratio = swept / sum(one_by_one)
    ok = ratio <= BAR
    print("\n| what | seconds |\n|---|---|")
    for seed, s in enumerate(one_by_one):
        print(f"| make train, train.seed={seed} | {s:.1f} |")
    print(f"| one by one, sum | {sum(one_by_one):.1f} |\n| sweep (local Ray, one trial at a time) | {swept:.1f} |")
    print(f"\nsweep / one by one: {ratio:.3f} (bar <= {BAR}) {'met' if ok else 'MISSED'}  "
          f"[{a.seeds} trials, {a.epochs} epochs, {os.cpu_count()} CPUs]")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
