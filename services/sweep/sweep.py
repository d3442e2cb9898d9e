"""Sweeps: every (variant, seed) trial of configs/sweeps/<name>.yaml as a whole chain, on Ray.

    make sweep SWEEP=demo-sweep               # a local Ray instance on this machine
    RAY_ADDRESS=head:6379 make sweep SWEEP=x  # trials on an existing Ray cluster (shared project folder)

A trial is the base experiment with the sweep's overrides, the variant's, and `train.seed=<seed>`,
under its own experiment name `<sweep>-<variant>-s<seed>`: its own artifacts/ and runs/ folders, its
stages run by the same runner functions as `make train` (services/run/runner.py), in the local
environments or, with RUNNER=docker, in the containers. Ray only decides where and when: each trial
asks for `cpus_per_trial` CPUs and the GPUs its train.device names, and sees only the GPUs it got.

What the sweep writes, in artifacts/<sweep>/: sweep.json (every trial: variant, seed, status,
failed stage, seconds, GPUs, log) and logs/<trial>.log (every stage's output). Each finished trial
leaves artifacts/<trial experiment>/trial.json with a digest of its whole configuration: a rerun of
the sweep skips those, and reruns the others, whose stages pick up where they stopped (the dataset
is up to date, training resumes from its last checkpoint).
"""
import hashlib
import json
import os
import socket
import sys
import time
from pathlib import Path

import yaml

from services.common import config, files, lock, paths, space
from services.common.log import UserError, info
from services.run import runner

STAGE = "sweep"
KEYS = {"base", "seeds", "variants", "overrides", "stages", "cpus_per_trial", "trials_at_once"}
# What a trial's process inherits from the sweep's: the runner's variables and the project's own.
PASSED_ON = ("RUNNER", "GPU", "VENV", "DOCKER", "COMPOSE", "OFFLINE", "HOST_UID", "HOST_GID", "TORCH_FLAVOUR",
             "BASE_IMAGE", "LOCAL_WHEELS", "EXTRA_CA", "PIP_FIND_LINKS", "PIP_NO_INDEX")


# ------------------------------------------------------------------------------------ the sweep file
class _UniqueKeys(yaml.SafeLoader):
    """YAML that refuses a key given twice: two variants of one name would silently become one."""


def _mapping(loader, node, deep=False):
    seen = set()
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=deep)
        if key in seen:
            raise UserError(f"{node.start_mark.name}, line {key_node.start_mark.line + 1}: '{key}' is given twice; "
                            f"give each variant (and each key) one name")
        seen.add(key)
    return loader.construct_mapping(node, deep=deep)


_UniqueKeys.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _mapping)


def load(path, extra=(), only=()) -> dict:
    """The sweep file (plus `extra` overrides for every trial: Make's ARGS), checked, with every
    trial's configuration loaded and validated: a wrong key or
    value in any trial stops the sweep before the first trial starts."""
    path = Path(path)
    if not path.is_file():
        known = ", ".join(runner.known_sweeps()) or "none"
        raise UserError(f"sweep file {path} not found; use configs/sweeps/<name>.yaml (SWEEP=<name>), known: {known}")
    try:
        with path.open() as f:  # a stream, so YAML's marks name the file
            sweep = yaml.load(f, Loader=_UniqueKeys) or {}
    except yaml.YAMLError as e:
        raise UserError(config.yaml_error_line(path, e)) from None
    where = str(path)
    if not isinstance(sweep, dict):
        raise UserError(f"{where} must be a mapping (base, seeds, variants, ...); fix the file")
    unknown = sorted(set(sweep) - KEYS)
    if unknown:
        raise UserError(f"{where}: unknown key(s) {', '.join(unknown)}; a sweep file takes {', '.join(sorted(KEYS))}")
    name = path.stem
    if not config.NAME_RE.match(name):
        raise UserError(f"{where}: the sweep's name '{name}' must be a plain folder name; rename the file")
    base = sweep.get("base")
    if not base or not (runner.ROOT / "configs" / f"{base}.yaml").is_file():
        raise UserError(f"{where}: base={base!r} is not an experiment; use one of: "
                        f"{', '.join(runner.known_experiments())}")
    seeds = _seeds(sweep.get("seeds", [0]), where)
    variants = sweep.get("variants") or {"base": []}
    if not isinstance(variants, dict):
        raise UserError(f"{where}: variants must be a mapping of name: [section.key=value, ...]")
    stages = sweep.get("stages") or list(runner.CHAIN)
    bad = [s for s in stages if s not in runner.CHAIN]
    if bad:
        raise UserError(f"{where}: unknown stage(s) {', '.join(map(str, bad))}; stages are {', '.join(runner.CHAIN)}")
    stages = [s for s in runner.CHAIN if s in stages]  # always in the chain's order
    common = _override_list(sweep.get("overrides") or [], f"{where}: overrides") + list(extra)
    cpus, at_once = sweep.get("cpus_per_trial", 1), sweep.get("trials_at_once", 0)
    for key, value in (("cpus_per_trial", cpus), ("trials_at_once", at_once)):
        if not isinstance(value, (int, float)) or isinstance(value, bool) or value < 0:
            raise UserError(f"{where}: {key}={value!r} must be a number >= 0")

    trials = _trials(name, base, variants, seeds, common, stages, where)
    _check_datasets(trials, where)
    if only:  # TRIALS=: every trial was checked above; these alone run
        unknown = [t for t in only if t not in {x["trial"] for x in trials}]
        if unknown:
            raise UserError(f"TRIALS: {', '.join(unknown)} is not a trial of {where}; its trials are "
                            f"{', '.join(t['trial'] for t in trials)}")
        trials = [t for t in trials if t["trial"] in only]
    return {"sweep": name, "file": str(path), "base": base, "seeds": seeds, "variants": variants, "stages": stages,
            "cpus_per_trial": cpus, "trials_at_once": int(at_once), "trials": trials}


def _trials(name: str, base: str, variants: dict, seeds: list, common: list, stages: list, where: str) -> list:
    """One trial per (variant, seed), each with its configuration loaded and checked."""
    trials = []
    for variant, overrides in variants.items():
        if not isinstance(variant, str) or not config.NAME_RE.match(variant):
            raise UserError(f"{where}: variant name {variant!r} must be a plain name (letters, digits, '_', '-', '.')")
        overrides = _override_list(overrides or [], f"{where}: variant {variant}")
        for seed in seeds:
            args = [*common, *overrides, f"train.seed={seed}"]
            experiment = f"{name}-{variant}-s{seed}"
            try:
                cfg = config.load(runner.ROOT / "configs" / f"{base}.yaml", args, experiment)
            except UserError as e:
                raise UserError(f"{where}: variant {variant}: {e}") from None
            trials.append({"trial": f"{variant}-s{seed}", "experiment": experiment, "variant": variant, "seed": seed,
                           "overrides": args, "gpus_wanted": gpus_wanted(cfg["train"]["device"]),
                           "digest": digest(cfg, stages), "cfg": cfg})
    return trials


def _seeds(seeds, where: str) -> list:
    if not isinstance(seeds, list) or not seeds:
        raise UserError(f"{where}: seeds must be a non-empty list of ints, e.g. seeds: [0, 1, 2]")
    plain = all(isinstance(s, int) and not isinstance(s, bool) and s >= 0 for s in seeds)
    if not plain or len(set(seeds)) < len(seeds):
        raise UserError(f"{where}: seeds={seeds} must be distinct ints >= 0, e.g. seeds: [0, 1, 2]")
    return seeds


def _override_list(value, where: str) -> list:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise UserError(f"{where}: must be a list of 'section.key=value' strings, e.g. [train.imgsz=1280]")
    return list(value)


def _check_datasets(trials: list, where: str) -> None:
    """Trials share a dataset folder by its name; two trials wanting different contents in one folder
    would rebuild it under each other."""
    by_name = {}
    for t in trials:
        d = t["cfg"]["dataset"]
        other = by_name.setdefault(d["name"], t)
        if other["cfg"]["dataset"] != d:
            keys = sorted(k for k in d if d[k] != other["cfg"]["dataset"].get(k))
            raise UserError(f"{where}: variants {other['variant']} and {t['variant']} build dataset '{d['name']}' "
                            f"differently ({', '.join('dataset.' + k for k in keys)}); give one of them its own "
                            f"dataset.name")


def gpus_wanted(device) -> int:
    """How many GPUs train.device names: cpu -> 0, "0" -> 1, "0,1" -> 2."""
    device = str(device if device is not None else "").strip().lower()
    if device in ("cpu", "mps", ""):
        return 0
    return len([d for d in device.split(",") if d.strip()])


def digest(cfg: dict, stages: list) -> str:
    """What a finished trial was: its whole configuration and the stages it ran."""
    blob = json.dumps({"config": cfg, "stages": stages}, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()


def finished(trial: dict, root: Path) -> bool:
    record = files.read_json(paths.artifacts_dir(trial["experiment"], root) / "trial.json")
    return bool(record) and record.get("digest") == trial["digest"] and record.get("status") == "done"


# ------------------------------------------------------------------------------------------ Ray
def check_address(address: str) -> None:
    """An unreachable cluster is one line at once, not Ray's minute of retries; an address that is
    not host:port is told so, not taken for a cluster that is down."""
    if address in ("auto", "local"):
        return
    host, port = split_address(address)
    try:
        with socket.create_connection((host, port), timeout=5):
            return
    except OSError as e:
        raise UserError(f"RAY_ADDRESS={address}: no Ray cluster answers there ({e.__class__.__name__}: {e}); start "
                        f"it (`ray start --head` on the head node) or unset RAY_ADDRESS for a local instance")


def split_address(address: str) -> tuple[str, int]:
    """(host, port) of RAY_ADDRESS: host:port, or ray://host:port (Ray Client)."""
    scheme = address.split("://", 1)[0] + "://" if "://" in address else ""
    hostport = address.split("://", 1)[-1].split("/", 1)[0]
    host, colon, port = hostport.rpartition(":")
    example = f"{scheme}{(host if colon else hostport) or 'head'}:{10001 if scheme == 'ray://' else 6379}"
    if not colon:
        raise UserError(f"RAY_ADDRESS={address} has no port; give the head node as host:port, e.g. "
                        f"RAY_ADDRESS={example} (the address `ray start --head` printed), or unset it for a local "
                        f"instance")
    if not port.isdigit() or not 1 <= int(port) <= 65535:
        raise UserError(f"RAY_ADDRESS={address}: '{port}' is not a port (1 to 65535); give the head node as "
                        f"host:port, e.g. RAY_ADDRESS={example}")
    return host.strip("[]") or "127.0.0.1", int(port)


def start_ray(address: str | None):
    """Join RAY_ADDRESS, or start Ray on this machine. Workers import the project from its folder,
    which every node sees at the same path (shared storage; README: "Sweeps on a cluster")."""
    import ray
    env = {"PYTHONPATH": os.pathsep.join([str(runner.ROOT), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep)}
    kw = dict(runtime_env={"env_vars": env}, log_to_driver=False, configure_logging=False)
    if address:  # run() checked that it answers
        try:
            ray.init(address=address, **kw)
        except (ConnectionError, RuntimeError) as e:
            auth = "" if os.environ.get("RAY_AUTH_MODE") else (
                "; a cluster with token authentication (Ray's default) also needs RAY_AUTH_MODE=token here, "
                "with its token in ~/.ray/auth_token or RAY_AUTH_TOKEN")
            raise UserError(f"RAY_ADDRESS={address}: could not join the Ray cluster ({str(e).splitlines()[0]}); "
                            f"check the address (`ray status` on the head node) or unset RAY_ADDRESS{auth}")
    else:
        os.environ["PYTHONPATH"] = env["PYTHONPATH"]  # the local instance's workers start from this process
        # "local": always an instance of its own, never a cluster that happens to run on this machine
        # (`ray start`, another sweep), which Ray would otherwise join. A small object store: trials
        # pass only their small result dicts.
        ray.init(address="local", include_dashboard=False, object_store_memory=100 * 1024**2, **kw)
    return ray


def run_trial(trial: dict, stages: list, env: dict, log: str, mark: str) -> dict:
    """One trial on a Ray worker: the chain, its output in the trial's log. Ray sets
    CUDA_VISIBLE_DEVICES to the GPUs it gave this task, so train.device counts from 0 among them."""
    import ray
    os.environ.update(env)  # a Ray worker of its own: the stages it starts read these
    gpus = [str(g) for g in ray.get_gpu_ids()]
    overrides = list(trial["overrides"])
    if gpus:
        overrides.append(f"train.device={','.join(str(i) for i in range(len(gpus)))}")
    s = trial_settings(env, trial["base"], trial["experiment"], overrides)
    Path(log).parent.mkdir(parents=True, exist_ok=True)
    files.atomic_write_json(Path(mark), {"host": socket.gethostname(), "pid": os.getpid(), "gpus": gpus})
    with open(log, "a") as f:
        f.write(f"=== {time.strftime('%Y-%m-%d %H:%M:%S')} {trial['experiment']} on {socket.gethostname()}, "
                f"GPUs {gpus or 'none'} (CUDA_VISIBLE_DEVICES={os.environ.get('CUDA_VISIBLE_DEVICES', '')})\n")
    t0 = time.perf_counter()
    try:
        code, stage = runner.run_chain(s, stages, s.runner or "local", s.gpu == "1", log_path=log)
    except runner.RunError as e:
        code, stage = 2, "setup"
        with open(log, "a") as f:
            f.write(f"runner: error: {e}\n")
    finally:
        Path(mark).unlink(missing_ok=True)
    tail = runner.last_lines(Path(log).read_text(errors="replace")) if code else []
    return {"status": "done" if code == 0 else "failed", "stage": stage, "exit": code,
            "seconds": round(time.perf_counter() - t0, 1), "gpus": gpus, "host": socket.gethostname(), "tail": tail}


# ------------------------------------------------------------------------------------------ driver
def trial_settings(env, base: str, experiment: str, overrides: list) -> "runner.Settings":
    """The runner's settings (Make's variables in `env`) for one trial: the base config, the trial's
    folders and overrides."""
    s = runner.settings(env)
    s.exp, s.experiment, s.args = base, experiment, overrides
    return s


def passed_on_env() -> dict:
    return {k: v for k, v in os.environ.items() if k in PASSED_ON or k.startswith(("PIPELINE_", "YOLO_"))}


def prepare_datasets(sweep: dict, root: Path, out: Path) -> None:
    """The dataset stage once per dataset, here, before any trial: trials then find it up to date
    instead of building one folder side by side."""
    if "dataset" not in sweep["stages"]:
        return
    done = set()
    for t in sweep["trials"]:
        name = t["cfg"]["dataset"]["name"]
        if name in done:
            continue
        done.add(name)
        log_path = out / "logs" / "datasets.log"
        info(STAGE, f"dataset '{name}' for every trial that uses it (log: {paths.rel(log_path, root)})")
        s = trial_settings(os.environ, sweep["base"], t["experiment"], t["overrides"])
        log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(log_path, "a") as log:
            code = runner.run_stage(s, "dataset", s.runner or "local", s.gpu == "1", log)
        if code:
            tail = runner.last_lines(log_path.read_text(errors="replace"))
            raise UserError(f"the dataset stage failed for '{name}' (exit {code}), so no trial started; its last "
                            f"line: {tail[-1] if tail else '?'} (whole log: {paths.rel(log_path, root)})")


def run(path, extra=(), root: Path = paths.ROOT, only=()) -> int:
    """The sweep: validate everything, skip what is done, run the rest on Ray, one table at the end."""
    from tqdm import tqdm
    sweep = load(path, extra, only)
    if not os.environ.get("RUNNER"):  # decided once here, not probed by every trial
        os.environ["RUNNER"] = runner.choose_runner(runner.settings())[0]
    address = os.environ.get("RAY_ADDRESS", "").strip() or None
    if address:
        check_address(address)
    out = paths.artifacts_dir(sweep["sweep"], root)
    space.check_writable(STAGE, [out])
    with lock.held(out, STAGE):  # a second driver of this sweep is refused; its trials lock their own
        return _run_locked(sweep, address, out, root, tqdm)


def _run_locked(sweep: dict, address: str | None, out: Path, root: Path, tqdm) -> int:
    todo = [t for t in sweep["trials"] if not finished(t, root)]
    for t in sweep["trials"]:
        t.update(status="skipped" if t not in todo else "queued", stage="", exit=0, seconds=0.0, gpus=[],
                 log=paths.rel(out / "logs" / f"{t['trial']}.log", root))
    info(STAGE, f"{sweep['sweep']}: {len(sweep['trials'])} trials ({len(sweep['variants'])} variants x "
                f"{len(sweep['seeds'])} seeds), {len(sweep['trials']) - len(todo)} already done; stages "
                f"{' -> '.join(sweep['stages'])}")
    write_record(sweep, out, root)
    if todo:
        prepare_datasets(sweep, root, out)
        ray = start_ray(address)
        try:
            _run_on_ray(ray, sweep, todo, out, root, tqdm)
        finally:
            ray.shutdown()
    write_record(sweep, out, root)
    print_table(sweep, root)
    failed = [t for t in sweep["trials"] if t["status"] == "failed"]
    return 1 if failed else 0


def _run_on_ray(ray, sweep: dict, todo: list, out: Path, root: Path, tqdm) -> None:
    total = ray.cluster_resources()
    need = max(t["gpus_wanted"] for t in todo)
    if need > total.get("GPU", 0):
        raise UserError(f"a trial's train.device needs {need} GPU(s), but the Ray cluster has "
                        f"{int(total.get('GPU', 0))}; use train.device=cpu, or a machine or cluster with GPUs")
    if sweep["cpus_per_trial"] > total.get("CPU", 0):
        raise UserError(f"cpus_per_trial={sweep['cpus_per_trial']} but the Ray cluster has {int(total.get('CPU', 0))} "
                        f"CPUs; lower cpus_per_trial")
    task = ray.remote(run_trial)
    env = passed_on_env()
    marks = out / "running"
    for t in todo:
        (marks / f"{t['trial']}.json").unlink(missing_ok=True)  # left by a killed sweep
    queue, pending = list(todo), {}
    limit = sweep["trials_at_once"] or len(todo)
    bar = tqdm(total=len(todo), desc=f"sweep {sweep['sweep']}", unit="trial", dynamic_ncols=True)

    shown = [""]

    def show():  # redrawn when a count changes, not every poll: logs of long sweeps stay readable
        running = sum(1 for t in pending.values() if (marks / f"{t['trial']}.json").is_file())
        failed = sum(1 for t in todo if t["status"] == "failed")
        queued = len(queue) + len(pending) - running
        state = f"done {bar.n - failed}, running {running}, failed {failed}, queued {queued}"
        if state != shown[0]:
            shown[0] = state
            bar.set_postfix_str(state, refresh=True)

    while queue or pending:
        while queue and len(pending) < limit:
            t = queue.pop(0)
            trial = {k: t[k] for k in ("trial", "experiment", "overrides")} | {"base": sweep["base"]}
            ref = task.options(num_cpus=sweep["cpus_per_trial"], num_gpus=t["gpus_wanted"],
                               max_retries=0).remote(trial, sweep["stages"], env, str(root / t["log"]),
                                                     str(marks / f"{t['trial']}.json"))
            pending[ref] = t
        show()
        ready, _ = ray.wait(list(pending), num_returns=1, timeout=2.0)
        for ref in ready:
            t = pending.pop(ref)
            try:
                result = ray.get(ref)
            except Exception as e:  # the worker itself died (killed, out of memory): the trial failed
                result = {"status": "failed", "stage": "?", "exit": -1, "seconds": 0.0, "gpus": [],
                          "tail": [f"the Ray worker running it died: {str(e).splitlines()[0]}"]}
            t.update(result)
            if result["status"] == "done":
                files.atomic_write_json(paths.artifacts_dir(t["experiment"], root) / "trial.json",
                                        {"digest": t["digest"], "status": "done", "sweep": sweep["sweep"],
                                         "variant": t["variant"], "seed": t["seed"], "overrides": t["overrides"],
                                         "stages": sweep["stages"], "seconds": result["seconds"],
                                         "gpus": result["gpus"], "host": result.get("host", "")})
            bar.update(1)
            write_record(sweep, out, root)
        show()
    bar.close()


def write_record(sweep: dict, out: Path, root: Path) -> None:
    keep = ("trial", "experiment", "variant", "seed", "overrides", "status", "stage", "exit", "seconds", "gpus", "log")
    record = {k: sweep[k] for k in ("sweep", "base", "seeds", "variants", "stages")}
    record["trials"] = [{k: t.get(k) for k in keep} for t in sweep["trials"]]
    files.atomic_write_json(out / "sweep.json", record)


def headline(experiment: str, root: Path) -> str:
    """AP50 and MR-2 Reasonable on val of the trial's last evaluated format, for the table."""
    metrics = paths.artifacts_dir(experiment, root) / "metrics"
    for fmt in ("rknn", "onnx", "pt"):
        m = files.read_json(metrics / f"{fmt}.json")
        val = (m or {}).get("sets", {}).get("val") if m else None
        if val:
            ap = val.get("coco", {}).get("AP50")
            mr = val.get("miss_rate", {}).get("Reasonable")
            return f"{fmt}: AP50 {ap:.3f}, MR-2 {100 * mr:.2f} %" if ap is not None and mr is not None else fmt
    return ""


def print_table(sweep: dict, root: Path) -> None:
    rows = [("trial", "status", "stage", "time", "result", "log")]
    for t in sweep["trials"]:
        stage = f"{t['stage']} (exit {t['exit']})" if t["status"] == "failed" else ""
        secs = f"{t['seconds'] / 60:.1f} min" if t["seconds"] else ""
        note = headline(t["experiment"], root) if t["status"] != "failed" else ""
        rows.append((t["trial"], t["status"], stage, secs, note, t["log"] if t["status"] == "failed" else ""))
    widths = [max(len(str(r[i])) for r in rows) for i in range(len(rows[0]))]
    print(f"\nsweep {sweep['sweep']}: artifacts/<{sweep['sweep']}-variant-sSEED>/ per trial, "
          f"{paths.rel(paths.artifacts_dir(sweep['sweep'], root) / 'sweep.json', root)}")
    for r in rows:
        print("  " + "  ".join(str(c).ljust(w) for c, w in zip(r, widths)).rstrip())
    for t in sweep["trials"]:
        if t["status"] == "failed" and t.get("tail"):
            print(f"\n{t['trial']} stopped at stage '{t['stage']}' (exit {t['exit']}); its last log lines:")
            print("\n".join(f"  | {line}" for line in t["tail"]))
    counts = {s: sum(t["status"] == s for t in sweep["trials"]) for s in ("done", "skipped", "failed")}
    print(f"\n{counts['done']} done, {counts['skipped']} skipped (done before), {counts['failed']} failed", flush=True)
    sys.stdout.flush()
