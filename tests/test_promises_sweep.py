"""Sweeps on a local Ray instance (docs/thesis/sweeps.md), with no training of their own: a trial
wanting more GPUs or CPUs than the cluster has is one line and exit 2 with no trial started; the table that
ends a sweep (each trial's status, a failed one's stage, exit code and log, a finished one's AP50 and
MR-2, then the failed trial's last log lines and the counts), and a rerun that skips a finished trial
but runs it again once its configuration changed. The trials evaluate the shared demo run's model
(stages: [evaluate])."""
import json
import re
from pathlib import Path

import pytest

from tests.helpers import copy_dataset, one_error, pipeline_venv, run_module


def sweep(root: Path, path: Path, *extra, timeout=900):
    return run_module("sweep", [str(path), *extra], root, timeout=timeout,
                      env={"RUNNER": "local", "VENV": str(pipeline_venv()), "RAY_ADDRESS": ""})


def sweep_refusal(proc) -> str:
    """The sweep's one line, once Ray's own notice when it starts a local instance (a library's line,
    not the sweep's; at most one) is set aside."""
    notice = "Token authentication is enabled for this Ray cluster."
    ray_lines = [line for line in proc.stderr.splitlines() if line.startswith(notice)]
    assert len(ray_lines) <= 1
    proc.stderr = "".join(line for line in proc.stderr.splitlines(True) if not line.startswith(notice))
    return one_error(proc, who="sweep")


def assert_nothing_started(root: Path, name: str) -> None:
    assert not (root / "artifacts" / f"{name}-a-s0").exists() and not (root / "runs").exists()
    assert not (root / "artifacts" / name / "logs").exists()  # no trial's log: none started
    record = json.loads((root / "artifacts" / name / "sweep.json").read_text())
    assert [t["status"] for t in record["trials"]] == ["queued"]


@pytest.mark.slow  # a local Ray instance: about a minute
def test_a_trial_wanting_more_gpus_than_the_cluster_has_is_one_line_and_starts_nothing(tmp_path):
    path = tmp_path / "greedy.yaml"
    devices = ",".join(str(i) for i in range(64))  # more GPUs than any machine here has
    path.write_text(f"base: demo\nseeds: [0]\nstages: [fit]\nvariants:\n  a:\n    - train.device={devices}\n")
    line = sweep_refusal(sweep(tmp_path, path))
    assert re.fullmatch(r"sweep: error: a trial's train\.device needs 64 GPU\(s\), but the Ray cluster has \d+; "
                        r"use train\.device=cpu, or a machine or cluster with GPUs", line), line
    assert_nothing_started(tmp_path, "greedy")


@pytest.mark.slow  # a local Ray instance: about half a minute
def test_a_trial_wanting_more_cpus_than_the_cluster_has_is_one_line_and_starts_nothing(tmp_path):
    """docs/thesis/sweeps.md: each trial asks Ray for `cpus_per_trial` CPUs; more than the cluster has
    would wait forever, so it is refused before any trial starts."""
    path = tmp_path / "hungry.yaml"
    path.write_text("base: demo\nseeds: [0]\nstages: [fit]\ncpus_per_trial: 4096\nvariants:\n  a: []\n")
    line = sweep_refusal(sweep(tmp_path, path))
    assert re.fullmatch(r"sweep: error: cpus_per_trial=4096 but the Ray cluster has \d+ CPUs; lower cpus_per_trial",
                        line), line
    assert_nothing_started(tmp_path, "hungry")


def table_of(stdout: str, name: str) -> list[str]:
    """The sweep's closing output: its table's header line, the table, the failed trials' log lines and
    the counts (the title line before them checked here)."""
    lines = stdout[stdout.rindex(f"\nsweep {name}: ") + 1:].splitlines()
    assert lines[0] == f"sweep {name}: artifacts/<{name}-variant-sSEED>/ per trial, artifacts/{name}/sweep.json"
    return lines[1:]


def headline(root: Path, experiment: str) -> str:
    """What the table's result column must say: AP50 and MR-2 Reasonable on val, from the metrics file."""
    val = json.loads((root / "artifacts" / experiment / "metrics" / "pt.json").read_text())["sets"]["val"]
    return f"pt: AP50 {val['coco']['AP50']:.3f}, MR-2 {100 * val['miss_rate']['Reasonable']:.2f} %"


def test_the_final_table_and_a_rerun_after_a_changed_trial_config(demo_snapshot, tmp_path):
    root = copy_dataset(demo_snapshot, tmp_path / "root")
    best = demo_snapshot / "artifacts" / "demo" / "weights" / "best.pt"
    path = tmp_path / "tbl.yaml"
    ok = f"[evaluate.format=pt, evaluate.weights={best}]"
    path.write_text(f"base: demo\nseeds: [0]\nstages: [evaluate]\nvariants:\n  a: {ok}\n"
                    f"  b: [evaluate.format=pt, evaluate.weights={tmp_path / 'no-such.pt'}]\n")
    first = sweep(root, path)
    assert first.returncode == 1, first.stdout[-3000:] + first.stderr[-3000:]  # a trial failed
    record = json.loads((root / "artifacts/tbl/sweep.json").read_text())
    seconds = {t["trial"]: t["seconds"] for t in record["trials"]}
    # sweep.json: every trial's variant, seed, overrides, status, failed stage and exit code, seconds, GPUs, log
    a, b = record["trials"]
    assert (a["variant"], a["seed"], a["status"], a["stage"], a["exit"], a["gpus"]) == ("a", 0, "done", "", 0, [])
    assert (b["variant"], b["status"], b["stage"], b["exit"], b["log"]) == ("b", "failed", "evaluate", 2,
                                                                            "artifacts/tbl/logs/b-s0.log")
    assert a["overrides"] == ["evaluate.format=pt", f"evaluate.weights={best}", "train.seed=0"]
    # the progress line's last state: trials done, running, failed and queued
    assert "done 1, running 0, failed 1, queued 0" in first.stderr.replace("\r", "\n"), first.stderr[-2000:]
    lines = table_of(first.stdout, "tbl")
    assert re.fullmatch(r"  trial\s+status\s+stage\s+time\s+result\s+log", lines[0]), lines[0]
    assert re.fullmatch(rf"  a-s0\s+done\s+{seconds['a-s0'] / 60:.1f} min\s+{re.escape(headline(root, 'tbl-a-s0'))}",
                        lines[1]), lines[1]
    assert re.fullmatch(rf"  b-s0\s+failed\s+evaluate \(exit 2\)\s+{seconds['b-s0'] / 60:.1f} min\s+"
                        r"artifacts/tbl/logs/b-s0\.log", lines[2]), lines[2]
    tail = lines[lines.index("b-s0 stopped at stage 'evaluate' (exit 2); its last log lines:") + 1:]
    quoted = tail[:tail.index("")]
    log = (root / "artifacts/tbl/logs/b-s0.log").read_text().splitlines()
    assert quoted and quoted == [f"  | {line}" for line in log if line.strip()][-len(quoted):]
    assert [q for q in quoted if q.startswith("  | evaluate: error: ") and "no-such.pt" in q], quoted
    assert lines[-1] == "1 done, 0 skipped (done before), 1 failed"
    trial = json.loads((root / "artifacts/tbl-a-s0/trial.json").read_text())
    assert trial["status"] == "done"

    # the failing variant dropped, the other unchanged: skipped, its log untouched, exit 0
    path.write_text(f"base: demo\nseeds: [0]\nstages: [evaluate]\nvariants:\n  a: {ok}\n")
    a_log = root / "artifacts/tbl/logs/a-s0.log"
    size = a_log.stat().st_size
    again = sweep(root, path)
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    lines = table_of(again.stdout, "tbl")
    assert re.fullmatch(rf"  a-s0\s+skipped\s+{re.escape(headline(root, 'tbl-a-s0'))}", lines[1]), lines[1]
    assert lines[-1] == "0 done, 1 skipped (done before), 0 failed" and a_log.stat().st_size == size

    # its configuration changed in the sweep file: run again
    path.write_text(f"base: demo\nseeds: [0]\nstages: [evaluate]\nvariants:\n"
                    f"  a: [evaluate.format=pt, evaluate.weights={best}, evaluate.conf=0.002]\n")
    changed = sweep(root, path)
    assert changed.returncode == 0, changed.stdout[-3000:] + changed.stderr[-3000:]
    assert table_of(changed.stdout, "tbl")[-1] == "1 done, 0 skipped (done before), 0 failed"
    assert a_log.stat().st_size > size
    assert json.loads((root / "artifacts/tbl-a-s0/trial.json").read_text())["digest"] != trial["digest"]
    metrics = json.loads((root / "artifacts/tbl-a-s0/metrics/pt.json").read_text())
    assert metrics["settings"]["conf"] == 0.002
