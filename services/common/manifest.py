"""The manifest beside every artifact: what produced it (config, code, versions, machine) and when."""
import os
import platform
import subprocess
import sys
import time
from importlib import metadata

from pathlib import Path

CODE = Path(__file__).resolve().parents[2]  # the checkout the code runs from (outputs may live elsewhere)


def now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def git_state() -> dict:
    """Commit and dirty flag. Make passes them in (PIPELINE_GIT_*) because containers have no .git."""
    if os.environ.get("PIPELINE_GIT_COMMIT"):
        return {"commit": os.environ["PIPELINE_GIT_COMMIT"],
                "dirty": os.environ.get("PIPELINE_GIT_DIRTY", "unknown") == "1"}
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=CODE, capture_output=True,
                                text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=CODE,
                               capture_output=True, text=True, check=True).stdout.strip() != ""
        return {"commit": commit, "dirty": dirty}
    except (OSError, subprocess.CalledProcessError):
        return {"commit": "unknown", "dirty": None}


def versions(packages) -> dict:
    out = {"python": platform.python_version()}
    for name in packages:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    return out


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def provenance(stage: str, cfg: dict, packages=()) -> dict:
    """The fields every stage's manifest starts with."""
    return {
        "stage": stage,
        "experiment": cfg["experiment"],
        "config": cfg,
        "git": git_state(),
        "versions": versions(packages),
        "host": {"platform": platform.platform(), "machine": platform.machine(),
                 "cpu": cpu_name(), "cpus": os.cpu_count(), "runner": os.environ.get("PIPELINE_RUNNER", "direct"),
                 "argv": sys.argv[1:]},
    }
