"""`make doctor`: can this machine run the pipeline in containers? One line per check.

    python3 -m services.doctor --config configs/<exp>.yaml --image citypersons-rknn/train:<tag>

Runs on the host with the standard library only (no environment to build first). Make passes the
engine and Compose commands in DOCKER and COMPOSE, and GPU=1|0 (0: the CPU override). Exit 1 when a
check fails, 0 when everything needed works (warnings included).
"""
import argparse
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(os.environ.get("PIPELINE_ROOT", Path(__file__).resolve().parents[2]))
TOOLKIT_URL = "https://docs.nvidia.com/datacenter/cloud-native/container-toolkit/latest/install-guide.html"
# The oldest driver each CUDA major version of a torch build runs on (minor-version compatibility).
MIN_DRIVER = {13: 580, 12: 525, 11: 450}
MIN_SHM_GB = 1.0     # below this, DataLoader workers die with "Bus error"
MIN_DISK_GB = 40     # Cityscapes zip (11 GB) + its images + COCO val + two images of ~6 GB

# What runs inside the train image: torch's view of the GPU and the container's /dev/shm.
PROBE = ("import json, os, torch; s = os.statvfs('/dev/shm'); print(json.dumps({"
         "'cuda': torch.cuda.is_available(), 'count': torch.cuda.device_count(), "
         "'built_for': torch.version.cuda, 'shm_gb': s.f_frsize * s.f_blocks / 1e9}))")

def run(cmd: list[str], timeout=300) -> subprocess.CompletedProcess:
    try:
        return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    except (OSError, subprocess.TimeoutExpired) as e:
        return subprocess.CompletedProcess(cmd, 127, "", str(e))


def first_line(text: str) -> str:
    return next((line.strip() for line in text.splitlines() if line.strip()), "no output")


def engine(docker: list[str]):  # yields its lines, returns whether the engine answers
    p = run(docker + ["info", "--format", "{{.ServerVersion}}"], timeout=30)
    if p.returncode != 0:
        yield ("FAIL", "docker engine", f"no Docker engine answers (`{' '.join(docker)} info`: "
               f"{first_line(p.stderr)}); start it, or run the stages natively with RUNNER=local")
        return False
    yield ("ok", "docker engine", f"answers (server {p.stdout.strip()})")
    return True


def compose_v2(compose: list[str]):  # yields its lines, returns whether Compose v2 is there
    p = run(compose + ["version", "--short"], timeout=30)
    version = p.stdout.strip().lstrip("v")
    major = int(version.split(".")[0]) if re.match(r"\d+\.", version) else 0
    if p.returncode != 0 or major < 2:
        yield ("FAIL", "compose v2", f"`{' '.join(compose[:2])} version` gave {version or first_line(p.stderr)!r}: "
               "install the Compose v2 plugin (package docker-compose-plugin); docker-compose v1 cannot "
               "read this file")
        return False
    yield ("ok", "compose v2", f"version {version}")
    return True


def in_train(compose: list[str], *command: str) -> subprocess.CompletedProcess:
    # run --rm is fine here: the verdict comes from the output, not the exit code.
    return run(compose + ["run", "--rm", "--no-deps", "-T", "fit", *command], timeout=600)


def gpu_checks(compose: list[str], docker: list[str], image: str, gpu: bool):
    if run(docker + ["image", "inspect", image], timeout=30).returncode != 0:
        yield ("warn", "train image", f"{image} is not built yet: `make images` builds it (a stage builds it "
               "when missing); the checks inside it are skipped")
        return
    yield ("ok", "train image", image)
    yield from torch_checks(lambda *command: in_train(compose, *command), gpu, "in the train container",
                 "the train image")


def local_checks(venv: Path, gpu: bool):
    """The same checks on a host without Docker (benchmarks/gpu_doctor.sh): nvidia-smi on the host,
    torch in the local train environment."""
    python = venv / "train" / "bin" / "python"
    if not python.exists():
        yield ("FAIL", "train env", f"{python} does not exist: `make setup` builds it from the lock file")
        return
    yield ("ok", "train env", str(python))

    def on_host(*command: str) -> subprocess.CompletedProcess:
        return run([str(python), *command[1:]] if command[0] == "python" else list(command), timeout=600)
    yield from torch_checks(on_host, gpu, "on this host", "the train environment", local=True)


def torch_checks(inside, gpu: bool, where: str, env: str, local: bool = False):
    """nvidia-smi, the driver against torch's CUDA build, torch's view of the GPU and /dev/shm, with
    `inside(*command)` running a command where the training runs (a container, or this host)."""
    driver = None
    check = "nvidia driver" if local else "nvidia runtime"
    if not gpu:
        yield ("warn", check, "not checked (GPU=0: training runs on the CPU)" if local else
               "not in use (GPU=0, the CPU override: training runs on the CPU); for "
               f"a GPU install the NVIDIA Container Toolkit ({TOOLKIT_URL}) and restart the engine")
    else:
        p = inside("nvidia-smi", "--query-gpu=name,driver_version", "--format=csv,noheader")
        gpus = [line.split(",") for line in p.stdout.splitlines() if "," in line]
        if p.returncode != 0 or not gpus:
            fix = ("install the NVIDIA driver (nvidia-smi comes with it), or train on the CPU (train.device=cpu)"
                   if local else f"install the NVIDIA Container Toolkit ({TOOLKIT_URL}) and restart the engine, "
                   "or use the CPU override with GPU=0")
            yield ("FAIL", check, f"nvidia-smi does not run {where} ({first_line(p.stderr or p.stdout)}): {fix}")
        else:
            driver = gpus[0][1].strip()
            yield ("ok", check, f"{len(gpus)} GPU(s) {where}: "
                   + ", ".join(g[0].strip() for g in gpus) + f"; driver {driver}")
    p = inside("python", "-c", PROBE)
    try:
        probe = json.loads(p.stdout.strip().splitlines()[-1])
    except (IndexError, ValueError):
        yield ("FAIL", "torch", f"python in {env} failed: {first_line(p.stderr)}")
        return
    cuda_major = int(probe["built_for"].split(".")[0]) if probe["built_for"] else None
    if gpu:
        if probe["cuda"]:
            yield ("ok", "torch gpu", f"torch sees {probe['count']} GPU(s) (built for CUDA {probe['built_for']})")
        else:
            yield ("FAIL", "torch gpu", f"torch in {env} sees no GPU" + (
                   ": check the driver lines above and below" if local else " although nvidia-smi runs: check the "
                   "driver line below, and that the engine was restarted after installing the toolkit"))
        if driver and cuda_major in MIN_DRIVER:
            need, have = MIN_DRIVER[cuda_major], int(driver.split(".")[0])
            if have < need:
                yield ("FAIL", "driver vs cuda", f"driver {driver} is older than CUDA {probe['built_for']} of the "
                       f"image needs (>= {need}): update the driver, or `make images TORCH_FLAVOUR=cu12` "
                       "(CUDA 12, driver >= 525)")
            else:
                yield ("ok", "driver vs cuda", f"driver {driver} runs CUDA {probe['built_for']} (needs >= {need})")
    else:
        yield ("ok", "torch", f"imports in {env} (CPU; built for CUDA {probe['built_for']})")
    if probe["shm_gb"] < MIN_SHM_GB:
        yield ("FAIL", "shm", f"/dev/shm {where} is {probe['shm_gb']:.2f} GB: DataLoader workers "
               "will die with 'Bus error'; keep shm_size in docker-compose.yml, or set train.workers=0")
    else:
        yield ("ok", "shm", f"/dev/shm {where}: {probe['shm_gb']:.1f} GB")


def disk():
    free = shutil.disk_usage(ROOT).free / 1e9
    status = "ok" if free >= MIN_DISK_GB else "warn"
    yield (status, "free disk", f"{free:.0f} GB free under {ROOT}" + (
        "" if free >= MIN_DISK_GB else f"; the real run needs about {MIN_DISK_GB} GB (Cityscapes, COCO val, images)"))


def ram_cache(config: Path):
    """A train config with cache: ram that this machine's memory will not hold: ultralytics would
    train uncached after a warning, each epoch decoding every PNG again."""
    try:
        import yaml
    except ImportError:  # the host's python without PyYAML: the fit stage checks it anyway
        return
    if not config.is_file():
        return
    from services.common import yolo_env
    defaults = yaml.safe_load((Path(__file__).resolve().parents[1] / "common" / "defaults.yaml").read_text())["train"]
    train = {**defaults, **((yaml.safe_load(config.read_text()) or {}).get("train") or {})}
    name = dataset_settings(config)[0]
    images = sorted((ROOT / "datasets" / name / "yolo" / "train" / "images").glob("*.png"))
    need = yolo_env.ram_cache_need(train, images)
    if need is None:
        return
    if not images:
        yield ("ok", "ram cache", f"train.extra.cache=ram: checked by `make fit` once datasets/{name}/yolo exists")
        return
    have = yolo_env.available_memory()
    if have and need > have:
        yield ("warn", "ram cache", f"train.extra.cache=ram needs about {need / 1e9:.1f} GB free ({len(images)} images "
               f"at imgsz {train['imgsz']}, with ultralytics' 2x margin) but {have / 1e9:.1f} GB are available: "
               "use train.extra.cache=disk, or free memory")
    else:
        yield ("ok", "ram cache", f"train.extra.cache=ram: about {need / 1e9:.1f} GB of {have / 1e9:.1f} GB available")


def dataset_settings(config: Path) -> tuple[str, bool, bool]:
    """(dataset name, generated demo?, COCO person listed?) from the experiment YAML."""
    d = _dataset_keys(config)
    return d.get("name") or "citypersons", d.get("generate_demo") is True, "coco_person" in config.read_text()


def proxy_annotations(config: Path):
    """The folder the proxy is drawn from (dataset.proxy_annotations) when the experiment generates
    the CityPersons-scale proxy (dataset.generate_proxy), else None."""
    d = _dataset_keys(config)
    if d.get("generate_proxy") is not True:
        return None
    return ROOT / str(d.get("proxy_annotations") or "datasets/citypersons/raw")


def _dataset_keys(config: Path) -> dict:
    """The experiment's dataset section. The host's python may lack PyYAML: then the keys the
    doctor reads (name, generate_demo, generate_proxy, proxy_annotations) are read with a pattern."""
    text = config.read_text()
    try:
        import yaml
        return (yaml.safe_load(text) or {}).get("dataset") or {}
    except ImportError:
        block = re.search(r"^dataset:\n((?:[ \t]+.*\n?|\s*\n)*)", text, re.M)
        body = block.group(1) if block else ""
        d = {}
        for key in ("name", "generate_demo", "generate_proxy", "proxy_annotations"):
            m = re.search(rf"^\s+{key}:\s*([^\s#]+)", body, re.M)
            if m:
                value = m.group(1).strip("'\"")
                d[key] = {"true": True, "false": False}.get(value, value)
        return d


def datasets(config: Path):
    if not config.is_file():
        yield ("FAIL", "datasets", f"{config} not found: pass EXP=<name> with configs/<name>.yaml present")
        return
    name, demo, coco = dataset_settings(config)
    if demo:
        yield ("ok", "datasets", f"{name}: generated on the first run (no downloads)")
        return
    mats = proxy_annotations(config)
    if mats is not None:
        where = os.path.relpath(mats, ROOT) if mats.is_relative_to(ROOT) else str(mats)
        missing = [f for f in ("anno_train.mat", "anno_val.mat") if not (mats / f).is_file()]
        if missing:
            yield ("FAIL", "datasets", f"{name}: the proxy is drawn from the real CityPersons annotations, but "
                   f"{where}/ lacks {', '.join(missing)}: `make dataset EXP=citypersons` downloads them "
                   "(no Cityscapes images needed), or set dataset.proxy_annotations")
        else:
            yield ("ok", "datasets", f"{name}: generated on the first run from {where}/anno_*.mat "
                   "(no Cityscapes images needed)")
        return
    raw = ROOT / "datasets" / name / "raw"
    images = (raw / "leftImg8bit_trainvaltest.zip").is_file() or (raw / "leftImg8bit" / "train").is_dir()
    missing = [f for f in ("anno_train.mat", "anno_val.mat") if not (raw / f).is_file()]
    if not images:
        yield ("FAIL", "datasets", f"datasets/{name}/raw/leftImg8bit_trainvaltest.zip is missing: it needs a "
               "Cityscapes account (docs/thesis/data.md); or set CITYSCAPES_USERNAME/PASSWORD for `make dataset`")
    elif missing:
        yield ("warn", "datasets", f"datasets/{name}/raw/ lacks {', '.join(missing)}: `make dataset` downloads them")
    else:
        yield ("ok", "datasets", f"datasets/{name}/raw/ has the Cityscapes images and both annotation files")
    if coco:
        coco_raw = ROOT / "datasets" / "coco" / "raw"
        if (coco_raw / "annotations" / "instances_val2017.json").is_file() and (coco_raw / "val2017").is_dir():
            yield ("ok", "coco person", "datasets/coco/raw/ has val2017 and its annotations")
        else:
            yield ("warn", "coco person", "datasets/coco/raw/ lacks val2017 or instances_val2017.json: "
                   "`make dataset` downloads them (about 1 GB)")


def line(status: str, check: str, text: str) -> str:
    return f"{status:<5} {check:<15} {text}"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="make doctor", description=__doc__.splitlines()[0])
    p.add_argument("--config", type=Path, required=True)
    p.add_argument("--image", help="the train image the stages would use")
    p.add_argument("--local", type=Path, metavar="VENV",
                   help="no Docker: check the GPU from this host and torch in VENV/train instead")
    a = p.parse_args(argv)
    docker = shlex.split(os.environ.get("DOCKER", "docker"))
    compose = shlex.split(os.environ.get("COMPOSE", "docker compose"))
    gpu = os.environ.get("GPU", "1") != "0"
    statuses = []
    for status, check, text in checks(a, docker, compose, gpu):  # each line as soon as it is known
        print(line(status, check, text), flush=True)
        statuses.append(status)
    failed = statuses.count("FAIL")
    print(f"doctor: {failed} check(s) failed" if failed else "doctor: ready"
          + (f" ({statuses.count('warn')} warning(s))" if statuses.count("warn") else ""))
    return 1 if failed else 0


def checks(a, docker: list[str], compose: list[str], gpu: bool):
    """Every check, as (status, check, text) lines; each check function yields its own."""
    if a.local:
        yield from local_checks(a.local, gpu)
    elif (yield from engine(docker)) and (yield from compose_v2(compose)):
        yield from gpu_checks(compose, docker, a.image, gpu)
    yield from disk()
    yield from datasets(a.config)
    yield from ram_cache(a.config)


if __name__ == "__main__":
    sys.exit(main())
