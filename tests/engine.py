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
    return {**os.environ, "CONTAINERS_CONF": str(conf)}


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
