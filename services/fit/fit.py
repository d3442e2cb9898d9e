"""Fine-tune YOLO with the real ultralytics trainer, reproducibly, resumably, and surviving OOM.

runs/<exp>/train/            the ultralytics run folder (results.csv, plots, TensorBoard events,
                             weights/last.pt) plus stage.json: what this run was started with
artifacts/<exp>/weights/     best.pt and last.pt, copied atomically when training ends
artifacts/<exp>/train/manifest.json   config, resolved ultralytics arguments, dataset checksum,
                             versions, devices, batch used and every retry, timings, final metrics
"""
import csv
import gc
import hashlib
import json
import shutil
import time
from pathlib import Path

from services.common import files, manifest, paths, space
from services.common.layout import Experiment
from services.common.log import UserError, info, read_json_object, reading, table, warn

STAGE = "fit"
# Train keys added since runs were first recorded, with the value every earlier run had: a run recorded
# before the key existed is compared as what it was (the stage always drew ultralytics' plots).
RECORDED_BEFORE = {"plots": True}


# ---------------------------------------------------------------------------------------- inputs
def dataset_checksum(yolo: Path, name: str) -> str:
    """What the dataset is, not when it was built: its input fingerprint and counts."""
    if not (yolo / "manifest.json").is_file() or not (yolo / f"{name}.yaml").is_file():
        raise UserError(f"no dataset in {paths.rel(yolo)} yet; run `make dataset` (with the same EXP) first")
    m = read_json_object(yolo / "manifest.json", "the dataset's manifest", "`make dataset FORCE=1` builds it again",
                         fields=("fingerprint", "counts"))
    stable = json.dumps({"fingerprint": m["fingerprint"], "counts": m["counts"]}, sort_keys=True)
    return hashlib.sha256(stable.encode()).hexdigest()


def local_model(spec: str, root: Path):
    """A model .yaml as given (ultralytics knows the stock ones), an existing .pt checkpoint, or None
    when the weights are not on disk."""
    if spec.endswith((".yaml", ".yml")):
        local = root / spec
        return str(local) if local.is_file() else spec
    for candidate in (Path(spec), root / spec, root / "datasets" / "weights" / spec):
        if candidate.is_file():
            return str(candidate)
    if "/" in spec or not spec.endswith(".pt"):
        raise UserError(f"train.model={spec}: no such file; give the path of a YOLO .pt checkpoint "
                        f"or a model .yaml")
    return None


def download_model(spec: str, root: Path) -> str:
    """Let ultralytics fetch a stock checkpoint (yolo11n.pt) into datasets/weights/; offline, say
    where to put the file instead."""
    target = root / "datasets" / "weights" / spec
    if paths.offline():
        raise UserError(f"train.model={spec} is not on disk and OFFLINE=1 forbids the download; on a connected "
                        f"machine it is fetched into {paths.rel(target, root)}, or copy it there, or set "
                        f"train.model=PATH")
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        from ultralytics.utils.downloads import attempt_download_asset
        got = Path(attempt_download_asset(str(target)))
        if got.is_file():
            return str(got)
        reason = "nothing was downloaded"
    except Exception as e:  # ultralytics raises several kinds for a failed download
        reason = str(e).splitlines()[0][:120]
    raise UserError(f"train.model={spec} is not on disk and could not be downloaded ({reason}); on a "
                    f"connected machine it is fetched into {paths.rel(target, root)}, or copy it there, "
                    f"or set train.model=PATH")


def check_checkpoint(path: str) -> None:
    if not path.endswith(".pt"):
        return
    import torch
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as e:
        raise UserError(f"train.model={path} is not a readable PyTorch checkpoint ({type(e).__name__}); "
                        f"give a YOLO .pt file such as yolo11n.pt")
    if not isinstance(ckpt, dict) or not (ckpt.get("model") or ckpt.get("ema")):
        raise UserError(f"train.model={path} is a PyTorch file but not a YOLO checkpoint (no model in it); "
                        f"give a YOLO .pt file such as yolo11n.pt")


def check_ram_cache(t: dict, yolo: Path, device: str) -> None:
    """train.extra.cache=ram that will not fit is refused before any work, with the estimate:
    ultralytics would drop the cache with a warning and the epochs would quietly take longer."""
    from services.common import yolo_env
    images = sorted((yolo / "train" / "images").glob("*.png"))
    ranks = len(device.split(",")) if device != "cpu" else 1  # DDP: every rank caches its own copy
    need = yolo_env.ram_cache_need(t, images, ranks)
    have = yolo_env.available_memory()
    if need is not None and have and need > have:
        raise UserError(f"train.extra.cache=ram needs about {need / 1e9:.1f} GB free ({len(images)} images at imgsz "
                        f"{t['imgsz']}, x{ranks} GPU process(es), x{yolo_env.RAM_CACHE_FACTOR:.0f} ultralytics' "
                        f"margin) but {have / 1e9:.1f} GB are available; use train.extra.cache=disk (resized "
                        f".npy copies beside the images) or drop the cache")


def check_device(t: dict) -> str:
    import torch
    device = str(t["device"]).strip().lower()
    if device == "cpu":
        if t["batch"] == "auto":
            raise UserError("train.batch=auto sizes the batch from free GPU memory; on CPU give a number")
        return device
    ids = [d.strip() for d in device.split(",")]
    if not all(d.isdigit() for d in ids):
        raise UserError(f"train.device={t['device']} is not a device; use a CUDA index (0), several (0,1) or cpu")
    if not torch.cuda.is_available():
        raise UserError(f"train.device={t['device']} asks for a GPU but torch sees none (torch "
                        f"{torch.__version__}, CUDA build {torch.version.cuda}); check the NVIDIA driver and "
                        f"that the container has the GPU, or set train.device=cpu to proceed")
    if max(int(d) for d in ids) >= torch.cuda.device_count():
        raise UserError(f"train.device={t['device']}: only {torch.cuda.device_count()} GPU(s) visible "
                        f"(0..{torch.cuda.device_count() - 1})")
    return ",".join(ids)


def ultralytics_args(t: dict, data_yaml: Path, run_dir: Path, device: str) -> dict:
    args = {"data": str(data_yaml), "epochs": t["epochs"], "patience": t["patience"] or 10**9,
            "batch": -1 if t["batch"] == "auto" else t["batch"], "imgsz": t["imgsz"],
            "optimizer": t["optimizer"], "lr0": t["lr0"], "warmup_epochs": t["warmup_epochs"],
            "amp": t["amp"], "seed": t["seed"], "deterministic": t["deterministic"], "device": device,
            "workers": t["workers"], "project": str(run_dir.parent), "name": run_dir.name,
            "exist_ok": True, "val": True, "plots": t["plots"]}
    clash = sorted(set(t["extra"]) & set(args))
    if clash:
        raise UserError(f"train.extra sets {', '.join(clash)}, which the train section already has; "
                        f"set train.{clash[0]} instead")
    args.update(t["extra"])
    from ultralytics.cfg import get_cfg
    try:
        get_cfg(overrides=args)  # ultralytics' own checks of names, types and ranges, before any work
    except (SyntaxError, TypeError, ValueError) as e:
        first = next((line for line in str(e).splitlines() if line.strip()), str(e))
        raise UserError(f"ultralytics rejects the train arguments: {first.strip()}; fix train.extra or the "
                        f"train section")
    return args


# ---------------------------------------------------------------------------------------- resume
def diff_keys(old: dict, new: dict) -> list[str]:
    old = {**RECORDED_BEFORE, **old}
    return [f"train.{k} ({old.get(k)!r} -> {new.get(k)!r})" for k in sorted(set(old) | set(new))
            if old.get(k) != new.get(k)]


def read_state(state_file: Path) -> dict | None:
    """stage.json, what this run was started with; None when there is none. One that cannot be read
    is one line: resuming, or refusing to, cannot be decided without it."""
    if not state_file.is_file():
        return None
    return read_json_object(state_file, "what the run was started with", "`make fit FRESH=1` trains anew (the run "
                            "is moved aside, never deleted)", fields=("status", "train", "dataset_sha256"))


def checkpoint_epoch(last: Path) -> int | None:
    """Epochs completed in last.pt (ultralytics stores the 0-based epoch; -1 once training finished);
    None when the file cannot be read (a kill while ultralytics' final strip_optimizer rewrote it)."""
    import torch
    try:
        return int(torch.load(last, map_location="cpu", weights_only=False).get("epoch", -1)) + 1
    except (RuntimeError, EOFError, OSError, ValueError, AttributeError):
        return None


class _AtomicCheckpoint(type(Path())):
    """A checkpoint path whose write_bytes, which ultralytics' save_model uses for last.pt and
    best.pt after every epoch, writes a temporary file and renames it into place: a kill during the
    write leaves the previous checkpoint, never half of one (which resume could not read)."""

    def write_bytes(self, data) -> int:
        if data is getattr(self, "written", None):  # best.pt, already written first (below)
            return len(data)
        before = getattr(self, "before", None)
        if before:
            before(data)
        with files.atomic_path(Path(self)) as tmp:
            tmp.write_bytes(data)
        self.written = data
        return len(data)


def _atomic_checkpoints(trainer) -> None:
    """Atomic checkpoints, and best.pt before last.pt: ultralytics writes last.pt first, so a kill
    between the two left a last.pt whose best epoch had no best.pt, and the resumed run (which
    compares against that epoch) never wrote one."""
    last, best = _AtomicCheckpoint(trainer.last), _AtomicCheckpoint(trainer.best)
    last.before = lambda data: best.write_bytes(data) if trainer.best_fitness == trainer.fitness else None
    trainer.last, trainer.best = last, best


def mend_best(run_dir: Path) -> bool:
    """A run killed (before the fix above) between last.pt and best.pt: when last.pt's epoch is its
    own best, best.pt is that checkpoint. True when it was mended."""
    import torch
    last, best = run_dir / "weights" / "last.pt", run_dir / "weights" / "best.pt"
    if best.is_file() or not last.is_file():
        return False
    with reading(last, "the run's last checkpoint", "`make fit FRESH=1` trains anew (the run is moved aside)"):
        ckpt = torch.load(last, map_location="cpu", weights_only=False)
        if not isinstance(ckpt, dict):
            raise TypeError(f"it holds a {type(ckpt).__name__}, not an ultralytics checkpoint")
    if ckpt.get("best_fitness") is None or ckpt.get("best_fitness") != (ckpt.get("train_metrics") or {}).get("fitness"):
        return False
    with files.atomic_path(best) as tmp:
        shutil.copyfile(last, tmp)
    return True


def trim_results(csv_path: Path, epochs_done: int) -> None:
    """Drop results.csv rows the checkpoint does not cover, so a resumed run has no duplicate epochs
    (a kill between writing the row and saving last.pt leaves one row too many)."""
    if not csv_path.is_file():
        return
    lines = csv_path.read_text().splitlines()
    kept = lines[:1] + [line for line in lines[1:] if int(float(line.split(",")[0])) <= epochs_done]
    if len(kept) != len(lines):
        files.atomic_write_text(csv_path, "\n".join(kept) + "\n")


# ---------------------------------------------------------------------------------------- stage
def run(cfg: dict, root: Path = paths.ROOT, fresh: bool = False, callbacks=()) -> dict:
    """Train (or resume, or skip when already done). Returns the train manifest."""
    t, name, exp = cfg["train"], cfg["dataset"]["name"], Experiment.of(cfg, root)
    yolo, run_dir = paths.yolo_dir(name, root), exp.run_dir
    data_sum = dataset_checksum(yolo, name)
    state_file, last = run_dir / "stage.json", run_dir / "weights" / "last.pt"
    state = read_state(state_file) if not fresh else None
    finished = bool(state) and state["status"] == "finished"
    changed = diff_keys(state["train"], t) + (["the dataset"] if state["dataset_sha256"] != data_sum else []) \
        if state else []
    # Before the checks below, which import torch and ultralytics (2 s): a rerun of a finished chain
    # passes this stage in a moment. Its settings are the ones that were checked when it trained.
    if finished and not changed and exp.train_manifest.is_file():
        if copy_weights(run_dir, exp.weights):
            info(STAGE, f"{paths.rel(exp.weights, root)} did not match the run's weights; copied them again")
        info(STAGE, f"{paths.rel(run_dir, root)} is finished and up to date; FRESH=1 trains anew")
        return files.read_json(exp.train_manifest)
    model_src, args = model_and_args(t, yolo, name, run_dir, root)
    if not finished:  # a finished run is skipped, or refused, with no writing
        space.require(STAGE, space.fit_need(cfg, root))
    resume = False
    if run_dir.exists() and fresh:
        info(STAGE, f"FRESH: moved the previous run aside to {paths.rel(files.move_aside(run_dir), root)}")
    elif changed:
        if not finished:
            raise UserError(f"refusing to resume {paths.rel(run_dir, root)}: changed since it started: "
                            f"{', '.join(changed)}; FRESH=1 starts anew (the old run is moved aside)")
        # Hours of GPU time are not thrown away (nor a thesis run replaced) without being asked.
        raise UserError(f"{paths.rel(run_dir, root)} is a finished run with other settings: {', '.join(changed)}; "
                        f"FRESH=1 trains anew with these (the finished run is moved aside, never deleted), "
                        f"or undo the change to keep it")
    elif state and last.is_file() and checkpoint_epoch(last) is None:
        info(STAGE, f"{paths.rel(last, root)} cannot be read (the run was killed while it was written); moved "
                    f"the run aside to {paths.rel(files.move_aside(run_dir), root)} and training anew")
    elif state and last.is_file():
        resume = True
        if mend_best(run_dir):
            info(STAGE, f"{paths.rel(last, root)}'s epoch was its best but had no best.pt (a kill between the two "
                        f"writes); copied it to best.pt")
    elif run_dir.exists():  # a run that died before its first checkpoint: keep it, but out of the way
        info(STAGE, f"moved an incomplete run without a checkpoint aside to "
                    f"{paths.rel(files.move_aside(run_dir), root)}")

    started, t0 = manifest.now(), time.perf_counter()
    if not resume:
        run_dir.mkdir(parents=True, exist_ok=True)
        state = {"status": "running", "train": t, "dataset_sha256": data_sum, "started": started,
                 "attempts": []}
        files.atomic_write_json(state_file, state)
    trainer = _train_with_retries(args, model_src, run_dir, state, state_file, resume, t, callbacks, root)

    state["status"] = "finished"
    files.atomic_write_json(state_file, state)
    return _finish(cfg, trainer, args, exp, state, data_sum, started, t0, root)


def model_and_args(t: dict, yolo: Path, name: str, run_dir: Path, root: Path) -> tuple[str, dict]:
    """The model to start from (fetched if it must be) and ultralytics' arguments, every check done."""
    from services.common import yolo_env
    model_src = local_model(t["model"], root)
    # Offline unless weights must be fetched: with YOLO_OFFLINE ultralytics does not even probe DNS.
    yolo_env.prepare(root, allow_downloads=model_src is None and not paths.offline())
    model_src = model_src or download_model(t["model"], root)
    check_checkpoint(model_src)
    device = check_device(t)
    check_ram_cache(t, yolo, device)
    return model_src, ultralytics_args(t, yolo / f"{name}.yaml", run_dir, device)


def _train_with_retries(args, model_src, run_dir, state, state_file, resume, t, callbacks, root):
    """model.train(), and on out-of-memory again with half the batch (resuming from last.pt when the
    failed attempt got that far), down to train.min_batch. Every attempt is recorded."""
    import torch
    from ultralytics import YOLO

    last = run_dir / "weights" / "last.pt"
    batch = args["batch"]
    while True:
        if resume:
            done = checkpoint_epoch(last)
            if done == 0:  # ultralytics marks a finished run with epoch -1: nothing left to resume
                return _FinishedRun(run_dir)
            trim_results(run_dir / "results.csv", done)
            info(STAGE, f"resuming {paths.rel(run_dir, root)} after epoch {done} of {args['epochs']}")
            model = YOLO(str(last))
        else:
            model = YOLO(model_src)
        seen = {"batches": []}
        model.add_callback("on_pretrain_routine_start", _atomic_checkpoints)
        model.add_callback("on_train_epoch_end", lambda tr: seen["batches"].append(tr.batch_size))
        for event, fn in callbacks:
            model.add_callback(event, fn)
        attempt = {"batch": batch, "resumed": resume, "started": manifest.now()}
        try:
            if resume:
                model.train(resume=True, data=args["data"], batch=batch, device=args["device"],
                            workers=args["workers"])
            else:
                model.train(**{**args, "batch": batch})
        except (torch.OutOfMemoryError, RuntimeError) as e:
            if not isinstance(e, torch.OutOfMemoryError) and "out of memory" not in str(e).lower():
                raise
            used = getattr(model.trainer, "batch_size", batch) if model.trainer else batch
            attempt.update(result="out of memory", error=str(e).splitlines()[0][:200], batch_at_failure=used,
                           finished=manifest.now())
            state["attempts"].append(attempt)
            files.atomic_write_json(state_file, state)
            smaller = max(int(used), 2) // 2
            if smaller < t["min_batch"]:
                raise UserError(f"out of memory even at batch={used} (floor train.min_batch={t['min_batch']}); "
                                f"lower train.imgsz, use a GPU with more memory, or lower train.min_batch")
            warn(STAGE, f"out of memory at batch={used}; retrying with batch={smaller}")
            batch = smaller
            del model
            gc.collect()
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
            resume = last.is_file()
            if not resume:  # nothing to continue from: start over in a clean folder
                files.move_aside(run_dir)
                run_dir.mkdir(parents=True)
                files.atomic_write_json(state_file, state)
            continue
        attempt.update(result="finished", batch_used=model.trainer.batch_size,
                       trainer_batch_changes=sorted(set(seen["batches"]) - {batch}), finished=manifest.now())
        state["attempts"].append(attempt)
        return model.trainer


class _FinishedRun:
    """Stands in for a trainer when ultralytics had finished but the stage was killed before
    recording it: everything needed is on disk."""

    def __init__(self, run_dir: Path):
        import yaml
        with reading(run_dir / "args.yaml", "ultralytics' record of the run's arguments",
                     "`make fit FRESH=1` trains anew (the run is moved aside)"):
            self.save_dir, self.args = run_dir, dict(yaml.safe_load((run_dir / "args.yaml").read_text()))
        self.best, self.last = run_dir / "weights" / "best.pt", run_dir / "weights" / "last.pt"
        self.metrics, self.batch_size = {}, self.args.get("batch")


def copy_weights(run_dir: Path, weights: Path) -> list[str]:
    """artifacts/<exp>/weights/{best,last}.pt: copies of the run's, (re)written when they differ, so a
    damaged or deleted copy is mended by the next `make fit`. Returns the names written."""
    weights.mkdir(parents=True, exist_ok=True)
    written = []
    for name in ("best.pt", "last.pt"):
        src, dst = run_dir / "weights" / name, weights / name
        if src.is_file() and not (dst.is_file() and files.sha256_file(dst) == files.sha256_file(src)):
            with files.atomic_path(dst) as tmp:
                shutil.copyfile(src, tmp)
            written.append(name)
    return written


def _finish(cfg, trainer, args, exp: Experiment, state, data_sum, started, t0, root) -> dict:
    import torch
    import ultralytics

    run_dir, weights = exp.run_dir, exp.weights
    if not (run_dir / "weights" / "best.pt").is_file():  # a finished run must have a best epoch to ship
        raise UserError(f"{paths.rel(run_dir, root)} finished without a best.pt (its best epoch's checkpoint was "
                        f"lost); `make fit FRESH=1` trains anew (the run is moved aside)")
    copy_weights(run_dir, weights)
    rows = list(csv.DictReader((run_dir / "results.csv").open())) if (run_dir / "results.csv").is_file() else []
    rows = [{k.strip(): float(v) for k, v in r.items()} for r in rows]
    best = max(rows, key=lambda r: 0.1 * r.get("metrics/mAP50(B)", 0) + 0.9 * r.get("metrics/mAP50-95(B)", 0),
               default={})
    resolved = trainer.args if isinstance(trainer.args, dict) else vars(trainer.args)
    devices = ([torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
               if args["device"] != "cpu" else [manifest.cpu_name()])
    result = {
        **manifest.provenance(STAGE, cfg, ["torch", "torchvision", "ultralytics", "numpy"]),
        "cuda": {"available": torch.cuda.is_available(), "cuda_build": torch.version.cuda,
                 "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None},
        "devices": devices,
        "dataset_sha256": data_sum,
        "ultralytics_args": {k: (str(v) if isinstance(v, Path) else v) for k, v in resolved.items()},
        "seed": cfg["train"]["seed"],
        "batch": {"requested": cfg["train"]["batch"], "used": trainer.batch_size,
                  "attempts": state["attempts"]},
        "epochs_completed": len(rows),
        "best_epoch": int(best.get("epoch", 0)),
        "final_metrics": {k: v for k, v in best.items() if k.startswith("metrics/")},
        "final_metrics_note": "ultralytics' own validation on the selection split (mAP50 and mAP50-95 "
                              "of the best epoch); the evaluation stage reports pycocotools numbers",
        "run_dir": paths.rel(run_dir, root),
        "weights": {n: paths.rel(weights / n, root) for n in ("best.pt", "last.pt") if (weights / n).is_file()},
        "ultralytics_version": ultralytics.__version__,
        "started": state.get("started", started), "finished": manifest.now(),
        "wall_s": round(time.perf_counter() - t0, 1),
    }
    files.atomic_write_json(exp.train_manifest, result)
    m = result["final_metrics"]
    print(table(["epochs", "best epoch", "batch used", "retries", "mAP50 (selection)", "mAP50-95", "wall s"],
                [[len(rows), result["best_epoch"], trainer.batch_size,
                  sum(a["result"] != "finished" for a in state["attempts"]),
                  m.get("metrics/mAP50(B)", float("nan")), m.get("metrics/mAP50-95(B)", float("nan")),
                  result["wall_s"]]], title=f"\n{paths.rel(exp.best, root)}"))
    return result
