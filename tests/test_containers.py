"""The real Compose file, run for real: both images built from the lock files, the demo chain
through `make train RUNNER=docker` as a non-root user, TensorBoard through `docker compose up`,
`make doctor`, and a failing stage. Uses the machine's Docker engine, else podman's Docker API
(tests/engine.py). The time each phase takes is printed at the end of the session."""
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from tests import engine
from tests.helpers import ROOT, failure, make, needs_make_venv, phase_time, require, run_module

# containers: the live engine tier; slow too (image builds and a real training in a container)
pytestmark = [needs_make_venv, pytest.mark.containers, pytest.mark.slow]

UID = GID = 4242  # not root: CI runs as root, and files owned by root would prove nothing
# Short but complete: real training in the train container, INT8 conversion in the convert one, at a
# quarter of the demo's pixels (what is checked is the containers, not what 2 epochs learn).
CHAIN_ARGS = ("train.epochs=2 train.imgsz=128 export.imgsz=128 evaluate.imgsz=128 dataset.calib_images=20 "
              "convert.analysis_images=1 train.plots=false")
FORMATS = ("pt", "onnx", "onnx-rknn-head", "rknn")
MISS_RATE_SETUPS = {"Reasonable", "Reasonable_small", "Reasonable_occ=heavy", "All"}


@pytest.fixture(scope="module")
def containers():
    """Make variables and environment that point Make at a live engine."""
    if engine.docker_answers():
        yield {"vars": ["DOCKER=docker", f"COMPOSE={engine.COMPOSE_BIN}"], "env": dict(os.environ),
               "docker_cli": "docker"}
        return
    if os.geteuid() != 0:  # the machine's, not the suite's: podman here runs rootful
        pytest.skip("no Docker engine answers, and podman here runs rootful: run the test suite as root")
    require(engine.why_not_podman() is None, f"a container engine: no Docker engine answers and "
                                             f"{engine.why_not_podman()}")
    env = engine.podman_env()
    with phase_time("containers: podman base image (debootstrap, once per machine)"):
        engine.ensure_base_image(env)
    try:
        with engine.podman_service(env) as host:
            yield {"vars": ["DOCKER=podman", f"COMPOSE={engine.COMPOSE_BIN}", f"BASE_IMAGE={engine.BASE_IMAGE}"],
                   "env": {**env, "DOCKER_HOST": host}, "docker_cli": "docker"}
    finally:
        engine.free_podman_tmp(env)


def cmake(containers, *args, root: Path, timeout=3000):
    proc = make(*containers["vars"], "RUNNER=docker", "GPU=0", f"HOST_UID={UID}", f"HOST_GID={GID}",
                *args, root=root, timeout=timeout, env=containers["env"])
    return proc


def image_tags(containers, root) -> dict:
    out = cmake(containers, "print-images", root=root).stdout
    return dict(line.split("=", 1) for line in out.split() if "=" in line)


@pytest.fixture(scope="module")
def chain(containers, tmp_path_factory):
    root = tmp_path_factory.mktemp("containers")
    for d in ("datasets", "artifacts", "runs"):
        (root / d).mkdir()
        os.chown(root / d, UID, GID)
    tags = image_tags(containers, root)
    docker = containers["vars"][0].split("=")[1]
    missing = {k: subprocess.run([docker, "image", "inspect", v], capture_output=True).returncode != 0
               for k, v in tags.items()}
    engine.check_free_disk(docker, containers["env"], [k for k, gone in missing.items() if gone], ROOT)
    wheels = ROOT / "requirements" / "wheels"
    had = set(wheels.iterdir())
    fetched = []

    def stage(target: str) -> subprocess.CompletedProcess:
        """`make <target>` in containers. LOCAL_WHEELS=1 installs the packages from requirements/wheels/
        only; a build that finds them in the builder's cache (a code change: the package layer is
        tagged by the Dockerfile and the lock alone, and the wheels are a bind mount, not part of its
        key) needs none. One that does not fails at pip: then the wheels are fetched, once, and the
        target runs again (its failed first run built nothing and tagged nothing)."""
        proc = cmake(containers, target, "EXP=demo", f"ARGS={CHAIN_ARGS}", "LOCAL_WHEELS=1", root=root)
        if proc.returncode != 0 and re.search(r"building \S+ failed", proc.stderr) and not fetched:
            with phase_time("containers: make wheels (every locked package, for LOCAL_WHEELS=1)"):
                p = make("wheels", root=root, timeout=1800)
                assert p.returncode == 0, failure(p)
            fetched.append(target)
            proc = cmake(containers, target, "EXP=demo", f"ARGS={CHAIN_ARGS}", "LOCAL_WHEELS=1", root=root)
        return proc

    try:
        with phase_time("containers: first stage (dataset), building the train image if missing"):
            first = stage("dataset")
        assert first.returncode == 0, failure(first)
        with phase_time("containers: make train EXP=demo (fit, export, evaluate, convert; convert image if missing)"):
            proc = stage("train")
        assert proc.returncode == 0, failure(proc)
    finally:
        for f in set(wheels.iterdir()) - had:  # only what this test fetched: 6 GB the images now hold
            f.unlink()
    return {"root": root, "first": first, "proc": proc, "tags": tags, "missing": missing, "docker": docker}


def test_missing_images_are_built_first(chain):
    """An image is built exactly when its tag is missing: the line and the build when it was, neither
    when it was there (whichever this machine had, both sides are asserted)."""
    out = chain["first"].stdout + chain["proc"].stdout
    assert set(chain["tags"]) == {"train", "convert"}, chain["tags"]
    for kind, tag in chain["tags"].items():
        said = f"images: {tag} is not built yet; building it first" in out
        built = f"images: building {tag} from Dockerfile.{kind}" in out
        assert said == built == chain["missing"][kind], (kind, chain["missing"], out[-3000:])
        assert out.count(f"images: building {tag} ") <= 1  # once, not once per stage
        assert subprocess.run([chain["docker"], "image", "inspect", tag], capture_output=True).returncode == 0


def test_chain_in_containers_writes_every_artifact_as_the_invoking_user(chain):
    root = chain["root"]
    out = chain["proc"].stdout
    assert "runner: docker (as asked)" in out
    art = root / "artifacts" / "demo"
    for f in ("weights/best.pt", "models/demo.onnx", "models/demo.rknn-head.onnx", "models/demo_int8_rk3588.rknn", "board/detect.py",
              "metrics/pt.json", "metrics/onnx.json", "metrics/rknn.json", "metrics/summary.md"):
        assert (art / f).is_file(), f
    dataset = json.loads((root / "datasets" / "demo" / "yolo" / "manifest.json").read_text())
    assert dataset["host"]["runner"] == "docker"
    train = json.loads((art / "train" / "manifest.json").read_text())
    assert train["host"]["runner"] == "docker" and train["config"]["train"]["epochs"] == 2
    assert len((root / "runs" / "demo" / "train" / "results.csv").read_text().splitlines()) == 3
    rknn = json.loads((art / "metrics" / "rknn.json").read_text())
    assert "val" in rknn["sets"]
    metrics = {fmt: assert_sane_metrics(root, fmt) for fmt in FORMATS}
    assert rknn["device"].startswith("rknn-toolkit2 simulator") and metrics["onnx"]["device"].startswith("onnxruntime")
    # every format scored the same images against the same ground truth
    assert len({json.dumps(m["fingerprint"]["ground_truth_sha256"]) for m in metrics.values()}) == 1
    # Every file the containers wrote belongs to the invoking user, not to root.
    owners = {(p.stat().st_uid, p.stat().st_gid) for d in ("datasets", "artifacts", "runs")
              for p in (root / d).rglob("*")}
    assert owners == {(UID, GID)}, owners


def assert_sane_metrics(root: Path, fmt: str) -> dict:
    """One format's metrics within what they can be, whatever 2 epochs learned: every val image scored,
    the detections file holding the count said, 0 <= AP <= AP50 <= 1, each miss rate in [0, 1], the
    model's size that of the file evaluated."""
    m = json.loads((root / "artifacts/demo/metrics" / f"{fmt}.json").read_text())
    val = m["sets"]["val"]
    gt = json.loads((root / "datasets/demo/yolo/val_gt.json").read_text())
    assert m["format"] == fmt and val["images"] == len(gt["images"]) == 60, (fmt, val["images"])
    assert len(json.loads((root / val["detections_file"]).read_text())) == val["detections"] >= 0, fmt
    coco = val["coco"]
    assert 0 <= coco["AP"] <= coco["AP50"] <= 1 and all(0 <= coco[k] <= 1 for k in ("AP75", "AR1", "AR100")), coco
    assert set(val["miss_rate"]) == MISS_RATE_SETUPS and all(0 <= v <= 1 for v in val["miss_rate"].values()), val
    assert m["model_bytes"] == (root / m["weights"]).stat().st_size > 0, fmt
    return m


def test_the_containers_numbers_are_the_local_evaluators(chain, tmp_path):
    """The onnx model the containers exported, evaluated again here by the local environment (same lock
    files): the same numbers as the evaluate container's."""
    ours = local_evaluation(chain["root"], tmp_path, "onnx")
    theirs = json.loads((chain["root"] / "artifacts/demo/metrics/onnx.json").read_text())["sets"]["val"]
    assert_same_numbers(ours, theirs)


def local_evaluation(root: Path, scratch: Path, fmt: str) -> dict:
    """`fmt`'s val metrics computed by the local evaluate stage on a copy of root's dataset and models
    (root's own files stay the containers', owned by their user)."""
    for part in ("datasets/demo", "artifacts/demo/models", "artifacts/demo/weights"):
        shutil.copytree(root / part, scratch / part)
    proc = run_module("evaluate", ["--config", str(ROOT / "configs/demo.yaml"), f"evaluate.format={fmt}",
                                   *CHAIN_ARGS.split()], scratch)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    return json.loads((scratch / "artifacts/demo/metrics" / f"{fmt}.json").read_text())["sets"]["val"]


def assert_same_numbers(ours: dict, theirs: dict) -> None:
    assert ours["images"] == theirs["images"] and abs(ours["detections"] - theirs["detections"]) <= \
        max(2, theirs["detections"] // 100), (ours["detections"], theirs["detections"])
    for key, value in theirs["coco"].items():
        if key != "library":
            assert abs(ours["coco"][key] - value) <= 1e-3, (key, ours["coco"][key], value)
    for key, value in theirs["miss_rate"].items():
        assert abs(ours["miss_rate"][key] - value) <= 1e-3, (key, ours["miss_rate"][key], value)


def test_failed_stage_is_named_with_its_last_log_lines(containers, chain):
    proc = cmake(containers, "train", "EXP=demo",
                 f"ARGS={CHAIN_ARGS} evaluate.format=pt evaluate.weights=artifacts/demo/weights/missing.pt", root=chain["root"])
    # make's trailer: the chain's own exit 2 (the evaluate stage's refusal, passed on), no traceback
    assert proc.returncode == 2 and "Traceback" not in proc.stdout + proc.stderr, proc.stderr[-3000:]
    assert proc.stderr.splitlines()[-1].endswith("] Error 2"), proc.stderr[-3000:]
    assert "evaluate: the container failed (exit 2); its last log lines:" in proc.stderr
    log_lines = [line for line in proc.stderr.splitlines() if line.startswith("  | ")]
    assert any("missing.pt" in line for line in log_lines), proc.stderr[-2000:]
    assert "train: stopped at stage 'evaluate'" in proc.stderr


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_tensorboard_service_serves_the_runs_on_localhost(containers, chain):
    port = free_port()
    env = {**containers["env"], "PIPELINE_ROOT": str(chain["root"]), "TB_PORT": str(port),
           "HOST_UID": str(UID), "HOST_GID": str(GID), "TRAIN_TAG": chain["tags"]["train"].split(":")[-1]}
    compose = [str(engine.COMPOSE_BIN), "-f", "docker-compose.yml", "-f", "docker-compose.cpu.yml"]
    up = subprocess.run(compose + ["up", "-d", "tensorboard"], cwd=ROOT, env=env, capture_output=True, text=True)
    try:
        assert up.returncode == 0, up.stderr
        runs, deadline = None, time.time() + 120
        while time.time() < deadline:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/data/runs", timeout=5) as r:
                    runs = json.loads(r.read())
                if runs:
                    break
            except OSError:
                pass
            time.sleep(2)
        assert runs and any(r.startswith("demo/train") for r in runs), runs
    finally:
        subprocess.run(compose + ["down"], cwd=ROOT, env=env, capture_output=True)


def test_doctor_with_a_live_engine(containers, chain):
    # the doctor speaks the Docker CLI; with podman it goes through podman's Docker API socket
    proc = make("doctor", "EXP=demo", "GPU=0", f"COMPOSE={engine.COMPOSE_BIN}", root=chain["root"],
                env=containers["env"])
    lines = proc.stdout.splitlines()
    assert proc.returncode == 0, proc.stdout + proc.stderr
    for check in ("docker engine", "compose v2", "train image", "torch", "shm", "free disk", "datasets"):
        assert any(line.split()[1:2] == check.split()[:1] and line.startswith(("ok", "warn")) for line in lines), check
    assert any(line.startswith("warn  nvidia runtime") for line in lines)


def test_image_sizes_script(containers, chain):
    proc = subprocess.run([sys.executable, "benchmarks/image_sizes.py", "--docker", chain["docker"],
                           *chain["tags"].values()], cwd=ROOT, capture_output=True, text=True,
                          env=containers["env"])
    assert proc.returncode == 0, proc.stderr
    print(proc.stdout)
    for tag in chain["tags"].values():
        assert tag in proc.stdout
    phase_time.note(proc.stdout.strip())
