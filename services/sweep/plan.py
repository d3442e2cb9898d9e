"""`make sweep SWEEP=<name> PLAN=1`: what a sweep would run, and about how long its trainings take,
without starting anything: no Ray, no stage, no file written.

Every trial goes through the sweep's own checks (sweep.load: each configuration loaded and
validated, one dataset build per dataset, known stages), then one table: each trial's model, sizes,
epochs, training images and an estimate of its training time. The speed comes from what the project
measured on that kind of device: for a GPU trial the GPU benchmark's record
(benchmarks/records/gpu_train-*.json, written by benchmarks/gpu_train.py --record: its 'stage vs bare'
row), for a CPU trial the development machine's proxy training, labelled as an estimate. Both are
scaled to the trial's input size by pixels, and say so.
"""
import json
import re
import shutil
import subprocess
from pathlib import Path

from services.common import paths
from services.run import runner

from . import sweep

RECORDS = runner.ROOT / "benchmarks" / "records"
CITYPERSONS_TRAIN = 2975  # the official train split's frames
DEMO_TRAIN = 240  # services/dataset/demo.py's n_train
# No record for CPUs: benchmarks/resolution_trained.py fine-tuned YOLO11n at imgsz 1280 on 135 proxy
# frames for 3 epochs in 854 s on the 2-core development machine (validation included).
CPU_ESTIMATE = {"images_per_s": 0.47, "imgsz": 1280,
                "source": "estimate: YOLO11n at imgsz 1280 on 2 CPU cores (benchmarks/resolution_trained.py, "
                          "docs/measurements.md), not a record"}


def run(path, extra=(), root: Path = paths.ROOT, only=()) -> int:
    """Print the plan of the sweep file `path`; bad input is sweep.load's one line, as for a run."""
    plan = sweep.load(path, extra, only)
    gpu = gpu_speed()
    rows = [trial_row(t, gpu, root) for t in plan["trials"]]
    print_plan(plan, rows, gpu, root)
    return 0


# ------------------------------------------------------------------------------------------ speeds
def gpu_speed() -> dict | None:
    """The GPU benchmark's record for this machine's GPU, else the first one there is (said so);
    None when there is no record."""
    records = sorted(RECORDS.glob("gpu_train-*.json"))
    if not records:
        return None
    here = local_gpu()
    chosen = next((r for r in records if here and _slug(_read(r).get("device", "")) == _slug(here)), records[0])
    record = _read(chosen)
    row = next((r for r in record.get("rows", []) if r and r[0] == "stage vs bare"), None)
    if row is None:
        return None
    columns = record["columns"]
    rate = float(str(row[columns.index("images/s")]).split("/")[0])
    where = "" if here and _slug(record["device"]) == _slug(here) else \
        f"; this machine's GPU: {here or 'none found'}, so the figure is another card's"
    return {"images_per_s": rate, "imgsz": int(record["imgsz"]),
            "source": f"measured on an {record['device']} ({paths.rel(chosen, runner.ROOT)}, 'stage vs bare': "
                      f"batch {row[columns.index('batch')]}, AMP {row[columns.index('amp')]}, "
                      f"{record.get('model', '?')}){where}"}


def local_gpu() -> str | None:
    """The first GPU nvidia-smi names, or None (no driver, no GPU)."""
    if not shutil.which("nvidia-smi"):
        return None
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"], capture_output=True,
                             text=True, timeout=20)
    except (OSError, subprocess.TimeoutExpired):
        return None
    names = [line.strip() for line in out.stdout.splitlines() if line.strip()]
    return names[0] if out.returncode == 0 and names else None


def _slug(name: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")


def _read(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


# ------------------------------------------------------------------------------------------ trials
def train_images(cfg: dict, root: Path) -> tuple[int, str]:
    """The training frames of a trial's dataset: counted when the dataset is built, else what its
    settings give (the frames less the selection split's share)."""
    d = cfg["dataset"]
    folder = paths.yolo_dir(d["name"], root) / "train" / "images"
    if folder.is_dir():
        return sum(1 for _ in folder.iterdir()), "counted"
    total = d["proxy_train_images"] if d["generate_proxy"] else DEMO_TRAIN if d["generate_demo"] else \
        CITYPERSONS_TRAIN
    return round(total * (1 - d["selection_fraction"])), "expected"


def trial_row(t: dict, gpu: dict | None, root: Path) -> dict:
    """One trial's line: what it trains and deploys, and its training time at its device's speed."""
    cfg, train = t["cfg"], t["cfg"]["train"]
    speed = gpu if t["gpus_wanted"] else CPU_ESTIMATE
    images, how = train_images(cfg, root)
    deploy = cfg["export"]["imgsz"] or train["imgsz"]
    h, w = (deploy, deploy) if isinstance(deploy, int) else deploy
    row = {"trial": t["trial"], "model": Path(str(train["model"])).name, "imgsz": train["imgsz"],
           "deploy": f"{h}x{w}", "epochs": train["epochs"], "images": f"{'~' if how == 'expected' else ''}{images}",
           "device": f"{t['gpus_wanted']} GPU" if t["gpus_wanted"] else "cpu", "rate": "?", "seconds": None}
    if speed is not None:
        rate = speed["images_per_s"] * (speed["imgsz"] / train["imgsz"]) ** 2  # training cost ~ pixels
        scaled = "scaled" if train["imgsz"] != speed["imgsz"] else "measured" if speed is gpu else "estimate"
        row.update(rate=f"{rate:.3g} {scaled}", seconds=train["epochs"] * images / rate)
    return row


# ------------------------------------------------------------------------------------------ output
def duration(seconds: float | None) -> str:
    if seconds is None:
        return "?"
    return f"{seconds:.0f} s" if seconds < 120 else f"{seconds / 60:.1f} min" if seconds < 7200 else \
        f"{seconds / 3600:.1f} h"


def datasets(plan: dict, root: Path) -> list[str]:
    """One line per dataset the sweep builds before its first trial (sweep.prepare_datasets)."""
    lines, seen = [], set()
    for t in plan["trials"]:
        cfg = t["cfg"]
        name = cfg["dataset"]["name"]
        if name in seen:
            continue
        seen.add(name)
        folder = paths.yolo_dir(name, root)
        state = "present; the dataset stage checks it is up to date" if folder.is_dir() else "to build"
        coco = ", and datasets/coco/yolo/ for evaluate.sets coco_person" if "coco_person" in \
            cfg["evaluate"]["sets"] else ""
        lines.append(f"  {name}: {paths.rel(folder, root)}/ ({state}){coco}")
    if "dataset" not in plan["stages"]:
        lines = [line + " [not built by this sweep: its stages leave out dataset]" for line in lines]
    return lines


def print_plan(plan: dict, rows: list, gpu: dict | None, root: Path) -> None:
    trials = plan["trials"]
    dtype = trials[0]["cfg"]["convert"]["dtype"].upper() if "convert" in plan["stages"] else ""
    whole = len(plan["variants"]) * len(plan["seeds"])
    count = f"{len(trials)} trials" + (f" of {whole} (TRIALS=)" if len(trials) < whole else "")
    print(f"sweep {plan['sweep']} ({plan['file']}): {count} = {len(plan['variants'])} variants x "
          f"{len(plan['seeds'])} seeds {plan['seeds']}, base configs/{plan['base']}.yaml")
    print(f"stages, every trial: {' -> '.join(plan['stages'])}{f' ({dtype})' if dtype else ''}")
    print("datasets, each built once before the first trial:")
    print("\n".join(datasets(plan, root)))
    if any(t["gpus_wanted"] for t in trials):
        print(f"GPU training speed: {gpu['images_per_s']} images/s at imgsz {gpu['imgsz']}, {gpu['source']}"
              if gpu else "GPU training speed: unknown (no record in benchmarks/records/; run benchmarks/gpu_train.py "
                          "--record on a GPU)")
    if any(not t["gpus_wanted"] for t in trials):
        print(f"CPU training speed: {CPU_ESTIMATE['images_per_s']} images/s at imgsz {CPU_ESTIMATE['imgsz']}, "
              f"{CPU_ESTIMATE['source']}")
    print("other sizes scaled by pixels (imgsz squared); 'scaled' and 'estimate' below are not measurements\n")
    head = {"trial": "trial", "model": "model", "imgsz": "train imgsz", "deploy": "deployed", "epochs": "epochs",
            "images": "train images", "device": "device", "rate": "images/s", "seconds": "training, at most"}
    table = [head] + [{**r, "seconds": duration(r["seconds"])} for r in rows]
    widths = {k: max(len(str(r[k])) for r in table) for k in head}
    for r in table:
        print("  " + "  ".join(str(r[k]).ljust(widths[k]) for k in head).rstrip())
    total = sum(r["seconds"] or 0 for r in rows)
    print(f"\ntraining in all: {duration(total)} of device time at most (patience may stop a training sooner); "
          f"validation, export, evaluation and conversion come on top")
    print("nothing started (PLAN=1): no Ray, no stage, no file written", flush=True)
