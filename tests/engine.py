"""A container engine for the live Compose test: the machine's Docker engine when one answers, else
podman (Debian's packages, installed by `make test`) with its Docker-API socket, so the real
docker-compose.yml runs through the real Compose v2 CLI either way.

podman here needs runc, cgroupfs and bounded ulimits, and a base image made locally with
debootstrap, since no registry can be reached (../shared/notes/containers-here.md).
"""
import os
import shutil
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

COMPOSE_BIN = Path(sys.prefix).parent / "tools" / "bin" / "docker-compose"
BASE_IMAGE = "localhost/debian:bookworm"   # the local stand-in for the registry's debian:bookworm-slim
STATE = Path(os.environ.get("PODMAN_TEST_STATE", "/var/tmp/citypersons-rknn-podman"))
CONTAINERS_CONF = """[containers]
default_ulimits = ["nofile={nofile}:{nofile}", "nproc=32768:32768"]
[engine]
runtime = "runc"
cgroup_manager = "cgroupfs"
events_logger = "file"
"""


def docker_answers() -> bool:
    return shutil.which("docker") is not None and subprocess.run(
        ["docker", "info"], capture_output=True).returncode == 0


def why_not_podman() -> str | None:
    if os.geteuid() != 0:
        return "podman here runs rootful: run the test suite as root, or with a Docker engine"
    for tool in ("podman", "debootstrap", "runc"):
        if shutil.which(tool) is None:
            return f"{tool} is not installed (`make test` installs it: make test-deps)"
    return None


def debian_mirror() -> str:
    for f in [Path("/etc/apt/sources.list"), *sorted(Path("/etc/apt/sources.list.d").glob("*"))]:
        if f.is_file():
            for line in f.read_text().splitlines():
                if line.lstrip().startswith("#"):
                    continue
                for word in line.replace("URIs:", " ").split():
                    if word.startswith("http") and "security" not in word:
                        return word
    return "http://deb.debian.org/debian"


def podman_env() -> dict:
    STATE.mkdir(parents=True, exist_ok=True)
    import resource
    nofile = min(20000, resource.getrlimit(resource.RLIMIT_NOFILE)[1])
    conf = STATE / "containers.conf"
    conf.write_text(CONTAINERS_CONF.format(nofile=nofile))
    # podman stages build contexts and layer diffs in $TMPDIR (/var/tmp by default) and leaves them
    # there when a build is interrupted: gigabytes each time. Here they stay in a folder the tests own
    # and empty afterwards (free_podman_tmp).
    tmp = STATE / "tmp"
    tmp.mkdir(exist_ok=True)
    return {**os.environ, "CONTAINERS_CONF": str(conf), "TMPDIR": str(tmp)}


def free_podman_tmp(env: dict) -> None:
    shutil.rmtree(env["TMPDIR"], ignore_errors=True)


def ensure_base_image(env: dict) -> None:
    if subprocess.run(["podman", "image", "exists", BASE_IMAGE], env=env).returncode == 0:
        return
    rootfs = STATE / "rootfs"
    shutil.rmtree(rootfs, ignore_errors=True)
    subprocess.run(["debootstrap", "--variant=minbase", "bookworm", str(rootfs), debian_mirror()],
                   check=True, capture_output=True)
    tar = subprocess.Popen(["tar", "-C", str(rootfs), "-c", "."], stdout=subprocess.PIPE)
    subprocess.run(["podman", "import", "-", BASE_IMAGE], stdin=tar.stdout, env=env, check=True,
                   capture_output=True)
    tar.wait()
    shutil.rmtree(rootfs, ignore_errors=True)


@contextmanager
def podman_service(env: dict):
    """podman's Docker-API socket, stopped by its PID afterwards."""
    sock = STATE / f"podman-{os.getpid()}.sock"
    sock.unlink(missing_ok=True)
    log = open(STATE / "service.log", "w")
    proc = subprocess.Popen(["podman", "system", "service", "--time=0", f"unix://{sock}"], env=env,
                            stdout=log, stderr=subprocess.STDOUT)
    try:
        for _ in range(100):
            if sock.exists():
                break
            time.sleep(0.1)
        else:
            raise RuntimeError(f"podman's API socket did not appear; see {STATE / 'service.log'}")
        yield f"unix://{sock}"
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()
        sock.unlink(missing_ok=True)


# What the live test writes, measured here (benchmarks/image_sizes.py; `du` of requirements/wheels/).
# A build holds its last layer twice (the container's copy and the committed one) until it ends;
# the chain's outputs, logs and podman's temporary files take the rest. On a fresh machine the test
# took 31 GB at its peak (free disk sampled every 5 s), against 6.3 + 7.3 + 2 x 6.6 + 4 = 30.8 here.
IMAGE_GB = {"train": 7.3, "convert": 6.6}
WHEELS_GB = 6.3
OTHER_GB = 4.0


def storage_root(docker: str, env: dict) -> Path:
    fmt = "{{.Store.GraphRoot}}" if docker == "podman" else "{{.DockerRootDir}}"
    out = subprocess.run([docker, "info", "-f", fmt], env=env, capture_output=True, text=True).stdout.strip()
    return Path(out or "/var/lib")


def check_free_disk(docker: str, env: dict, missing: list[str], repo: Path) -> None:
    """Fail at once, in one line, when the images and wheels cannot fit: a full disk half-way through
    a 6 GB download says only 'No space left on device' deep in pip's traceback."""
    if not missing:
        return
    store = storage_root(docker, env)
    while not store.exists():
        store = store.parent
    need = {store: sum(IMAGE_GB[k] for k in missing) + max(IMAGE_GB[k] for k in missing) + OTHER_GB}
    need_repo = WHEELS_GB
    if os.stat(store).st_dev == os.stat(repo).st_dev:
        need[store] += need_repo
    else:
        need[repo] = need_repo
    for path, gb in need.items():
        free = shutil.disk_usage(path).free / 1e9
        if free < gb:
            import pytest
            pytest.fail(f"the live container test needs about {gb:.0f} GB free on the disk of {path} to build "
                        f"the {' and '.join(missing)} image(s); it has {free:.1f} GB: free some space "
                        f"(old images: `{docker} image prune -a`) and run again", pytrace=False)
