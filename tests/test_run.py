"""The runner behind every Make target (services/run/): runner choice, GPU detection, yes/no
variables, the failed-stage message and its own errors, without a Docker engine."""
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests import engine
from tests.helpers import ROOT, demo_root, needs, needs_make_venv, one_error
from services.run import runner
from services.run.runner import RunError, Settings

NO_ENGINE = "/nonexistent/docker"  # a Docker CLI that is not there: no engine answers


def test_yes_no_variables_mean_what_they_say():
    for word in ("1", "true", "yes", "TRUE", "Yes"):
        assert runner.flag("FRESH", word) is True
    for word in ("0", "false", "no", "", None):
        assert runner.flag("FRESH", word) is False
    with pytest.raises(RunError, match=r"FRESH=maybe is not a yes/no value; use FRESH=1 .* or FRESH=0"):
        runner.flag("FRESH", "maybe")


def test_settings_read_make_variables_from_the_environment():
    s = runner.settings({"EXP": "demo", "ARGS": "train.epochs=2 'dataset.name=a b'", "FRESH": "0",
                         "FORCE": "yes", "OFFLINE": "", "GPU": "true", "VENV": "/x/venvs"})
    assert (s.exp, s.fresh, s.force, s.offline, s.gpu) == ("demo", False, True, False, "1")
    assert s.args == ["train.epochs=2", "dataset.name=a b"] and s.venv == Path("/x/venvs")
    assert runner.stage_command(s, "fit")[-3:] == ["--force", "train.epochs=2", "dataset.name=a b"]
    assert "--force" not in runner.stage_command(runner.settings({"FRESH": "0"}), "fit")
    trial = Settings(exp="demo", experiment="demo-sweep-a-s0", args=["train.seed=0"])  # a sweep's trial
    assert runner.stage_command(trial, "export") == ["python", "-m", "services.export", "--config", "configs/demo.yaml",
                                                    "--experiment", "demo-sweep-a-s0", "train.seed=0"]
    with pytest.raises(RunError, match="RUNNER=podman is not a runner; use RUNNER=docker or RUNNER=local"):
        runner.settings({"RUNNER": "podman"})


def test_runner_choice():
    assert runner.choose_runner(Settings(runner="local"), answers=True) == ("local", "as asked")
    assert runner.choose_runner(Settings(runner="docker"), answers=True) == ("docker", "as asked")
    assert runner.choose_runner(Settings(), answers=True) == ("docker", "a Docker engine answered")
    choice, why = runner.choose_runner(Settings(), answers=False)
    assert choice == "local" and "no Docker engine answered" in why
    with pytest.raises(RunError, match=r"RUNNER=docker but no Docker engine answers .*RUNNER=local"):
        runner.choose_runner(Settings(runner="docker"), answers=False)
    # asked for real: a Docker CLI that does not exist has no engine behind it
    assert runner.choose_runner(Settings(docker=[NO_ENGINE]))[0] == "local"


def test_gpu_detection():
    assert runner.choose_gpu(Settings(gpu="0"), found=True) == (False, "GPU=0 as asked")
    assert runner.choose_gpu(Settings(gpu="1"), found=True) == (True, "GPU=1 as asked")
    assert runner.choose_gpu(Settings(), found=True)[0] is True
    off, why = runner.choose_gpu(Settings(), found=False)
    assert off is False and "docker-compose.cpu.yml" in why
    with pytest.raises(RunError, match=r"GPU=1 but this machine has no NVIDIA runtime .* GPU=0"):
        runner.choose_gpu(Settings(gpu="1"), found=False)
    # asked for real: no engine and, on a machine without nvidia-smi, nothing found
    if not shutil.which("nvidia-smi"):
        assert runner.nvidia_found(Settings(docker=[NO_ENGINE])) is False
    assert runner.compose_files(False) == ["-f", "docker-compose.yml", "-f", "docker-compose.cpu.yml"]


def test_image_tags_follow_the_code(tmp_path, monkeypatch):
    """A stage never runs stale code: a change to any input of an image (its Dockerfile, its lock file,
    a code or config file, a new one) gives it a new tag, so the image is built first; a file that goes
    into no image changes no tag. Checked on a copy of those inputs, changed one at a time."""
    s = Settings()
    tag = runner.image(s, "train")
    assert tag.startswith("citypersons-rknn/train:") and len(tag.split(":")[1]) == 12
    assert runner.image(s, "train") == tag  # deterministic
    assert runner.image(s, "convert") != tag
    assert "services/run/runner.py" in runner.image_inputs() and "configs/demo.yaml" in runner.image_inputs()
    tags = {kind: runner.image(s, kind) for kind in ("train", "convert")}
    for f in ["Dockerfile.train", "Dockerfile.convert", "requirements/train.lock", "requirements/convert.lock",
              *runner.image_inputs()]:
        (tmp_path / f).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(ROOT / f, tmp_path / f)
    monkeypatch.setattr(runner, "ROOT", tmp_path)
    now = lambda: {kind: runner.image(s, kind) for kind in tags}  # noqa: E731
    assert now() == tags  # the copy holds every input

    def changed(path: str, text: str = "\n# changed\n") -> set:
        """The images whose tag a change of `path` (appended to, or created) changes; then undone."""
        f = tmp_path / path
        before = f.read_bytes() if f.exists() else None
        f.write_bytes((before or b"") + text.encode())
        try:
            return {kind for kind, t in now().items() if t != tags[kind]}
        finally:
            f.write_bytes(before) if before is not None else f.unlink()
            assert now() == tags

    assert changed("services/fit/fit.py") == {"train", "convert"}  # the code goes into both images
    assert changed("services/common/decode.py") == {"train", "convert"}
    assert changed("configs/demo.yaml") == {"train", "convert"}
    assert changed("Dockerfile.train") == {"train"} and changed("Dockerfile.convert") == {"convert"}
    assert changed("requirements/train.lock") == {"train"} and changed("requirements/convert.lock") == {"convert"}
    assert changed("services/common/new_module.py", "X = 1\n") == {"train", "convert"}  # a new file too
    assert changed("configs/sweeps/new-sweep.yaml", "base: demo\n") == {"train", "convert"}
    assert changed("services/common/notes.txt", "not code\n") == set()  # no image input


def runner_cli(*args, env=None, cwd=ROOT):
    return subprocess.run([sys.executable, "-m", "services.run", *args], cwd=cwd, capture_output=True, text=True,
                          env={**os.environ, **(env or {})}, timeout=120)


def test_the_runners_own_errors_are_one_line():
    assert "unknown target 'fitt'; did you mean 'fit'?" in one_error(runner_cli("fitt"), "runner")
    line = one_error(runner_cli("dataset", env={"RUNNER": "docker", "DOCKER": NO_ENGINE, "EXP": "demo"}), "runner")
    assert line.startswith("runner: error: RUNNER=docker but no Docker engine answers")
    line = one_error(runner_cli("fit", env={"FRESH": "nope", "EXP": "demo"}), "runner")
    assert "FRESH=nope is not a yes/no value" in line
    line = one_error(runner_cli("dataset", env={"EXP": "nope"}), "runner")
    assert "configs/nope.yaml not found" in line and "known experiments: citypersons, demo" in line


def test_make_passes_unknown_words_to_the_runner():
    proc = subprocess.run(["make", "--no-print-directory", "evalute"], cwd=ROOT, capture_output=True, text=True)
    assert "unknown target 'evalute'; did you mean 'evaluate'?" in one_error(proc, "runner")


@needs(engine.COMPOSE_BIN.exists(), f"the Compose CLI {engine.COMPOSE_BIN} (make test's tools environment)")
def test_a_compose_file_compose_rejects_is_one_line(tmp_path):
    for f in ("docker-compose.yml", "docker-compose.cpu.yml"):
        shutil.copy(ROOT / f, tmp_path / f)
    s = Settings(compose=[str(engine.COMPOSE_BIN)])
    runner.check_compose_file(s, False, root=tmp_path)  # the real file passes
    text = (tmp_path / "docker-compose.yml").read_text().replace("  fit:\n", "  fit:\n    shm_size: [8]\n", 1)
    (tmp_path / "docker-compose.yml").write_text(text)
    with pytest.raises(RunError, match=r"Compose rejects docker-compose.yml \(.*shm_size.*\); fix the file"):
        runner.check_compose_file(s, False, root=tmp_path)


@needs_make_venv
def test_a_failed_stage_in_the_chain_is_named_with_its_last_log_lines(tmp_path, monkeypatch, capsys):
    """How the sweep engine calls the chain: output to a log, the failure named with its tail."""
    monkeypatch.setenv("PIPELINE_ROOT", str(tmp_path))
    s = Settings(exp="demo", args=["dataset.selection_fraction=2"], venv=Path(sys.prefix).parent)
    log = tmp_path / "trial.log"
    code, stage = runner.run_chain(s, runner.CHAIN, runner="local", log_path=log)
    assert (code, stage) == (2, "dataset")
    err = capsys.readouterr().err.splitlines()
    assert err[0] == "train: stopped at stage 'dataset' (exit 2); its last log lines:"
    quoted = "  | dataset: error: override: dataset.selection_fraction=2.0 is out of range"
    assert any(line.startswith(quoted) for line in err)
    assert not (tmp_path / "datasets").exists()  # refused before any work


@needs_make_venv
def test_a_project_path_with_spaces_works(tmp_path, demo_raw):
    """Make users on WSL and macOS have them: the demo dataset stage runs from such a folder (on the
    session's demo download, copied in: its generation is the same writing as the conversion's)."""
    files = subprocess.run(["git", "ls-files", "-co", "--exclude-standard"], cwd=ROOT, capture_output=True,
                           text=True).stdout.split("\n")
    project = tmp_path / "my projects" / "city persons"
    for f in filter(None, files):
        if (ROOT / f).is_file():
            (project / f).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / f, project / f)
    demo_root(project, demo_raw)
    env = {k: v for k, v in os.environ.items() if k != "PIPELINE_ROOT"}
    proc = subprocess.run(["make", "--no-print-directory", "dataset", "EXP=demo", "RUNNER=local",
                           f"VENV={Path(sys.prefix).parent}"], cwd=project, env=env, capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert "runner: local (as asked)" in proc.stdout
    assert (project / "datasets" / "demo" / "yolo" / "calib.txt").is_file()
    help_ = subprocess.run(["make", "help"], cwd=project, capture_output=True, text=True)
    assert help_.returncode == 0 and "test-fast" in help_.stdout
