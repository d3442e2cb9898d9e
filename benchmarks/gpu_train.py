"""Training throughput on a GPU, ready for the few minutes a GPU machine is lent: the training stage
against a bare `yolo train` with identical arguments, then a grid of AMP x batch x cache.

    python benchmarks/gpu_train.py [--exp demo|proxy] [--epochs 2] [--imgsz 640] [--batches 16,32]
                                   [--caches none,disk] [--amps 1,0] [--cpu]

Prints one table: images/s, peak GPU memory (torch.cuda.max_memory_allocated), and the share of the
wall time the training loop waited for the dataloader (from batch end to the next batch start).
Bar, on a GPU: stage/bare images/s >= 0.97. `--cpu` is the smoke test the suite runs: the demo, one
short epoch at a small size, a one-cell grid. Each training runs in its own process (a fresh CUDA
context, so the peak memory is that run's own).
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
BAR = 0.97
SHARED = ROOT.parent / "shared" / "data" / "citypersons"


def one_run(spec: dict) -> dict:
    """One bare ultralytics training in this process, timed from inside the loop."""
    from services.common import yolo_env
    yolo_env.prepare(Path(spec["root"]))
    import torch
    from ultralytics import YOLO
    marks = {"wait": 0.0, "images": 0, "t0": None, "last_end": None, "batches": 0}

    def start(trainer):
        now = time.perf_counter()
        marks["batches"] += 1
        if marks["batches"] == 4:  # the first batches pay for warm-up (cudnn autotune, workers)
            marks["t0"] = now
        elif marks["t0"] is not None and marks["last_end"] is not None:
            marks["wait"] += now - marks["last_end"]

    def end(trainer):
        marks["last_end"] = time.perf_counter()
        if marks["t0"] is not None:
            marks["images"] += trainer.batch_size

    model = YOLO(spec["model"])
    model.add_callback("on_train_batch_start", start)
    model.add_callback("on_train_batch_end", end)
    model.train(**spec["args"])
    seconds = (marks["last_end"] or 0) - (marks["t0"] or 0)
    peak = torch.cuda.max_memory_allocated() / 2**30 if torch.cuda.is_available() else None
    return {"images_per_s": marks["images"] / seconds if seconds > 0 else 0.0, "peak_gb": peak,
            "wait_share": marks["wait"] / seconds if seconds > 0 else 0.0}


def images_per_s(results_csv: Path, images_per_epoch: int) -> float:
    """From a run's results.csv: epochs after the first, images over their time (validation included)."""
    with open(results_csv) as f:
        times = [float(r["time"]) for r in csv.DictReader(f, skipinitialspace=True)]
    spans = [b - a for a, b in zip([0.0] + times, times)]
    spans = spans[1:] or spans
    return images_per_epoch * len(spans) / sum(spans)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--exp", default="demo", choices=["demo", "proxy"])
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--imgsz", type=int, default=640)
    p.add_argument("--batches", default="16,32")
    p.add_argument("--caches", default="none,disk")
    p.add_argument("--amps", default="1,0")
    p.add_argument("--workers", type=int, default=8)
    p.add_argument("--model", help="train.model for every run (default: the experiment's); yolo11n.yaml "
                                   "trains from scratch where no weights can be fetched")
    p.add_argument("--annotations", default=str(SHARED),
                   help="proxy: the folder holding anno_train.mat and anno_val.mat")
    p.add_argument("--train-images", type=int, default=300, help="proxy: train frames drawn")
    p.add_argument("--record", help="also write the table as JSON here (the sweep's PLAN reads such records)")
    p.add_argument("--cpu", action="store_true", help="smoke test on the CPU: one short epoch, small, no plots, "
                                                      "a one-cell grid")
    p.add_argument("--one", help=argparse.SUPPRESS)  # internal: one grid cell, JSON in, JSON out
    a = p.parse_args(argv)
    if a.one:
        print("RESULT " + json.dumps(one_run(json.loads(a.one))), flush=True)
        return 0
    if a.cpu:
        a.epochs, a.imgsz, a.batches, a.caches, a.amps, a.workers = 1, 128, "8", "none", "0", 0
    device = "cpu" if a.cpu else "0"
    if not a.cpu:
        import torch
        if not torch.cuda.is_available():
            print("gpu_train: error: torch sees no GPU here; run with --cpu for the smoke test", file=sys.stderr)
            return 2
    t_start = time.perf_counter()
    from services.common import config
    root = Path(tempfile.mkdtemp(prefix="gpu-train-"))
    env = {k: v for k, v in os.environ.items() if k != "PYTEST_CURRENT_TEST"}
    env["PIPELINE_ROOT"] = str(root)
    data_args = ([] if a.exp == "demo" else [f"dataset.proxy_annotations={Path(a.annotations).resolve()}",
                                             f"dataset.proxy_train_images={a.train_images}"])
    if a.model:
        data_args.append(f"train.model={a.model}")
    built = subprocess.run([sys.executable, "-m", "services.dataset", "--config", f"configs/{a.exp}.yaml",
                            *data_args], cwd=ROOT, env=env, capture_output=True, text=True)
    if built.returncode:
        print(f"gpu_train: error: the dataset stage failed: {built.stderr.strip().splitlines()[-1:]}", file=sys.stderr)
        return 1
    cfg = config.load(ROOT / "configs" / f"{a.exp}.yaml", data_args)
    t = cfg["train"]
    yolo_dir = root / "datasets" / cfg["dataset"]["name"] / "yolo"
    n_train = len(list((yolo_dir / "train" / "images").glob("*.png")))
    fraction = 0.25 if a.cpu else 1.0
    common = {"epochs": a.epochs, "imgsz": a.imgsz, "optimizer": t["optimizer"], "lr0": t["lr0"],
              "warmup_epochs": 0, "seed": t["seed"], "deterministic": t["deterministic"], "device": device,
              "fraction": fraction, "patience": 10**9, "val": True, "plots": not a.cpu}
    rows = []
    where = "CPU (smoke test)" if a.cpu else torch_device_name()

    def record(ratio=None):
        """The table so far as JSON (and one line on stdout): a run cut short still leaves what it measured."""
        print("row:", rows[-1], flush=True)
        if not a.record:
            return
        import platform
        from services.common.files import atomic_write_json
        atomic_write_json(Path(a.record), {
            "device": where, "exp": a.exp, "imgsz": a.imgsz, "workers": a.workers, "model": t["model"],
            "train_images": round(n_train * fraction), "host_cpus": os.cpu_count(),
            "python": platform.python_version(),
            "columns": ["run", "batch", "amp", "cache", "images/s", "peak GPU GB", "dataloader wait", "stage/bare"],
            "rows": [[str(c) for c in r] for r in rows], "stage_over_bare": ratio, "bar": BAR,
            "seconds": round(time.perf_counter() - t_start)})

    # the stage against bare `yolo train`, with identical arguments
    batch, amp, cache = int(a.batches.split(",")[0]), bool(int(a.amps.split(",")[0])), a.caches.split(",")[0]
    extra = {"fraction": fraction, "cache": False if cache == "none" else cache}
    overrides = [f"train.epochs={a.epochs}", f"train.imgsz={a.imgsz}", f"train.batch={batch}", f"train.amp={amp}",
                 f"train.device={device}", f"train.workers={a.workers}", f"train.extra={json.dumps(extra)}",
                 "train.warmup_epochs=0", "train.patience=0", f"train.plots={not a.cpu}"]
    stage = subprocess.run([sys.executable, "-m", "services.fit", "--config", f"configs/{a.exp}.yaml", "--fresh",
                            *data_args, *overrides], cwd=ROOT, env=env, capture_output=True, text=True)
    if stage.returncode:
        print(f"gpu_train: error: the training stage failed: {stage.stderr.strip().splitlines()[-1:]}", file=sys.stderr)
        return 1
    per_epoch = round(n_train * fraction)
    stage_ips = images_per_s(root / "runs" / a.exp / "train" / "results.csv", per_epoch)
    from services.common import yolo_env
    yolo_env.prepare(root)
    env.update({k: os.environ[k] for k in ("YOLO_CONFIG_DIR", "YOLO_OFFLINE", "YOLO_AUTOINSTALL")})
    bare_args = {**common, "batch": batch, "amp": amp, "workers": a.workers, "cache": extra["cache"],
                 "data": str(yolo_dir / f"{cfg['dataset']['name']}.yaml"), "project": str(root / "bare"),
                 "name": "train", "exist_ok": True}
    # ultralytics' own `yolo` entry point, run by this interpreter (where pip put the script varies)
    yolo = [sys.executable, "-c", "from ultralytics.cfg import entrypoint; entrypoint()"]
    bare = subprocess.run([*yolo, "train", f"model={t['model']}", *(f"{k}={v}" for k, v in bare_args.items())],
                          cwd=ROOT, env=env, capture_output=True, text=True)
    if bare.returncode:
        print(f"gpu_train: error: bare yolo train failed: {bare.stderr.strip().splitlines()[-1:]}", file=sys.stderr)
        return 1
    bare_ips = images_per_s(root / "bare" / "train" / "results.csv", per_epoch)
    ratio = stage_ips / bare_ips
    rows.append(["stage vs bare", batch, amp, cache, f"{stage_ips:.1f} / {bare_ips:.1f}", "", "", f"{ratio:.3f}"])
    record(ratio)

    # the grid, bare ultralytics, timed inside the loop
    for b in [int(x) for x in a.batches.split(",")]:
        for amp_ in [bool(int(x)) for x in a.amps.split(",")]:
            for c in a.caches.split(","):
                spec = {"root": str(root), "model": t["model"],
                        "args": {**common, "batch": b, "amp": amp_, "workers": a.workers,
                                 "cache": False if c == "none" else c, "epochs": 1,
                                 "data": str(yolo_dir / f"{cfg['dataset']['name']}.yaml"),
                                 "project": str(root / "grid"), "name": f"b{b}-amp{int(amp_)}-{c}",
                                 "exist_ok": True, "val": False}}
                run = subprocess.run([sys.executable, __file__, "--one", json.dumps(spec)], cwd=ROOT, env=env,
                                     capture_output=True, text=True)
                out = next((line for line in run.stdout.splitlines() if line.startswith("RESULT ")), None)
                if run.returncode or out is None:
                    rows.append(["grid", b, amp_, c, "failed", "", "", run.stderr.strip().splitlines()[-1:]])
                    record(ratio)
                    continue
                r = json.loads(out[7:])
                rows.append(["grid", b, amp_, c, f"{r['images_per_s']:.1f}",
                             "n/a" if r["peak_gb"] is None else f"{r['peak_gb']:.2f}",
                             f"{100 * r['wait_share']:.0f} %", ""])
                record(ratio)

    from services.common.log import table
    import shutil
    shutil.rmtree(root, ignore_errors=True)
    print(table(["run", "batch", "amp", "cache", "images/s", "peak GPU GB", "dataloader wait", "stage/bare"], rows,
                title=f"\n{a.exp}, imgsz {a.imgsz}, {a.workers} workers, {where}; "
                      f"{time.perf_counter() - t_start:.0f} s in all"))
    ok = a.cpu or ratio >= BAR
    print(f"\nbar (GPU): stage/bare images/s >= {BAR}: {ratio:.3f} "
          f"{'(not judged on the CPU)' if a.cpu else 'ok' if ok else 'MISSED'}")
    return 0 if ok else 1


def torch_device_name() -> str:
    import torch
    return torch.cuda.get_device_name(0)


if __name__ == "__main__":
    sys.exit(main())
