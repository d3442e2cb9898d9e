"""The runner: every `make` target is one call to it, and the sweep engine calls the same functions.

Standard library only, so it runs on the host before any environment or image exists. It owns the
choice of runner (docker or local), GPU detection, building a missing environment or image, the
Compose call with the container's real exit code, and the order of the whole chain.
"""
import dataclasses
import difflib
import hashlib
import os
import shlex
import shutil
import socket
import subprocess
import sys
from pathlib import Path

from services.common import overrides  # standard library only, as this file

ROOT = Path(__file__).resolve().parents[2]

# Stage name -> the environment (and image) it runs in. One name per stage everywhere: the Make
# target, the module under services/, the Compose service and the name the stage prints.
STAGES = {"dataset": "train", "fit": "train", "export": "train", "evaluate": "train", "convert": "convert"}
# `make train`: the whole chain. The evaluation runs after the export, so it covers pt and ONNX.
CHAIN = ["dataset", "fit", "export", "evaluate", "convert"]
ALIASES = {"rknn": "convert"}  # the target's name before wave 2
IMAGES = {"train": "citypersons-rknn/train", "convert": "citypersons-rknn/convert"}
LOG_TAIL = 15


class RunError(Exception):
    """A problem the user fixes: printed as one line, exit 2."""


def flag(name: str, value) -> bool:
    """A Make boolean: 1/true/yes on; 0/false/no/empty off; anything else refused (FRESH=0 once
    meant "on" because any non-empty value counted)."""
    v = ("" if value is None else str(value)).strip().lower()
    if v in ("1", "true", "yes", "on"):
        return True
    if v in ("0", "false", "no", "off", ""):
        return False
    raise RunError(f"{name}={value} is not a yes/no value; use {name}=1 (or true/yes) or {name}=0 (or false/no)")


@dataclasses.dataclass
class Settings:
    """What Make's variables say (Make exports them; a Python caller passes them)."""
    exp: str = "citypersons"
    args: list = dataclasses.field(default_factory=list)
    force: bool = False
    fresh: bool = False
    offline: bool = False
    runner: str = ""          # "", docker or local; "" = docker when an engine answers
    gpu: str = ""             # "", 1 or 0; "" = detect
    venv: Path = ROOT / ".venv"
    docker: list = dataclasses.field(default_factory=lambda: ["docker"])
    compose: list = dataclasses.field(default_factory=list)
    tb_port: str = "6006"
    host_uid: str = str(os.getuid())
    host_gid: str = str(os.getgid())
    torch_flavour: str = ""
    local_wheels: bool = False
    base_image: str = ""
    extra_ca: str = ""
    experiment: str = ""      # the folders' name when not the config's (a sweep's trials)
    sweep: str = ""           # make sweep / make report: configs/sweeps/<sweep>.yaml
    plan: bool = False        # make sweep: print the trials and a training-time estimate, start nothing
    trials: str = ""          # make sweep: only these trials (<variant>-s<seed>, comma-separated)
    source: str = ""          # make predict: an image, a folder or a video
    format: str = ""          # make predict: pt, onnx or rknn

    @property
    def config(self) -> str:
        return f"configs/{self.exp}.yaml"

    @property
    def name(self) -> str:
        return self.experiment or self.exp


def settings(env=None) -> Settings:
    env = os.environ if env is None else env
    get = lambda k, d="": env.get(k, d) or d  # noqa: E731 - empty means "not set", as in Make
    docker = shlex.split(get("DOCKER", "docker"))
    s = Settings(exp=get("EXP", "citypersons"), args=split_args(get("ARGS")), force=flag("FORCE", get("FORCE")),
                 fresh=flag("FRESH", get("FRESH")), offline=flag("OFFLINE", get("OFFLINE")),
                 runner=get("RUNNER").strip(), gpu=get("GPU").strip(), venv=ROOT / get("VENV", ".venv"),
                 docker=docker, compose=shlex.split(get("COMPOSE")) or docker + ["compose"],
                 tb_port=get("TB_PORT", "6006"), host_uid=get("HOST_UID", str(os.getuid())),
                 host_gid=get("HOST_GID", str(os.getgid())), torch_flavour=get("TORCH_FLAVOUR"),
                 local_wheels=flag("LOCAL_WHEELS", get("LOCAL_WHEELS")), base_image=get("BASE_IMAGE"),
                 extra_ca=get("EXTRA_CA"), sweep=get("SWEEP").strip(), plan=flag("PLAN", get("PLAN")),
                 trials=get("TRIALS").strip(),
                 source=get("SOURCE"), format=get("FORMAT").strip())
    if s.runner not in ("", "docker", "local"):
        raise RunError(f"RUNNER={s.runner} is not a runner; use RUNNER=docker or RUNNER=local "
                       "(or leave it out: docker when an engine answers)")
    if s.gpu:
        s.gpu = "1" if flag("GPU", s.gpu) else "0"
    return s


def split_args(text: str) -> list:
    """ARGS as the user means it: shell words, a list or mapping with spaces kept whole
    (services/common/overrides.py)."""
    try:
        return overrides.split_args(text)
    except overrides.OverrideError as e:
        raise RunError(str(e))


def shown(path: Path) -> str:
    """A path as the user would write it: relative to the project when inside it."""
    return str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else str(path)


def say(text: str) -> None:
    print(text, flush=True)


def call(cmd: list, **kw) -> subprocess.CompletedProcess:
    """A command whose output we read; a missing program is a failed command, not a traceback."""
    try:
        return subprocess.run(cmd, capture_output=True, text=True, **kw)
    except OSError as e:
        return subprocess.CompletedProcess(cmd, 127, "", str(e))


# ------------------------------------------------------------------------------ runner and GPU
def engine_answers(s: Settings) -> bool:
    return call(s.docker + ["info"], timeout=60).returncode == 0


def choose_runner(s: Settings, answers=None) -> tuple[str, str]:
    """(runner, why). `answers` is whether a Docker engine answers, asked only when needed."""
    ask = (lambda: engine_answers(s)) if answers is None else (lambda: answers)
    if s.runner == "local":
        return "local", "as asked"
    if s.runner == "docker":
        if not ask():
            raise RunError(f"RUNNER=docker but no Docker engine answers (`{shlex.join(s.docker)} info` failed); "
                           "start it (`make doctor` explains), or run the stages natively with RUNNER=local")
        return "docker", "as asked"
    if ask():
        return "docker", "a Docker engine answered"
    return "local", f"no Docker engine answered; stages run in {shown(s.venv)}/"


def nvidia_found(s: Settings) -> bool:
    """The engine lists the NVIDIA runtime, or the host has a working nvidia-smi."""
    runtimes = call(s.docker + ["info", "-f", "{{json .Runtimes}}"], timeout=60).stdout
    return "nvidia" in runtimes or call(["nvidia-smi", "-L"], timeout=60).returncode == 0


def choose_gpu(s: Settings, found=None) -> tuple[bool, str]:
    """(GPU reservation on?, why). GPU=1 without an NVIDIA runtime is refused: Compose would fail
    later with a message about device drivers that names neither cause nor fix."""
    found = nvidia_found(s) if found is None else found
    if s.gpu == "0":
        return False, "GPU=0 as asked"
    if s.gpu == "1":
        if not found:
            raise RunError("GPU=1 but this machine has no NVIDIA runtime (the engine lists none and nvidia-smi "
                           "does not work); install the NVIDIA Container Toolkit (`make doctor` explains), "
                           "or use GPU=0 for the CPU override")
        return True, "GPU=1 as asked"
    if found:
        return True, "the NVIDIA runtime was found"
    return False, ("no NVIDIA runtime found: the CPU override docker-compose.cpu.yml is used; for a GPU install "
                   "the NVIDIA Container Toolkit (make doctor explains)")


def compose_files(gpu: bool) -> list:
    return ["-f", "docker-compose.yml"] + ([] if gpu else ["-f", "docker-compose.cpu.yml"])


# ------------------------------------------------------------------------------ environments and images
def ensure_env(s: Settings, name: str) -> Path:
    """VENV/<name>, built from requirements/<name>.lock when missing or older than the lock file.
    pip installs exactly the lock: every package pinned and hash-checked, nothing resolved
    (--no-deps); `pip check` proves the set consistent. The stamp comes last, so an interrupted
    install is redone, not trusted."""
    env, lock = s.venv / name, ROOT / "requirements" / f"{name}.lock"
    stamp = env / ".installed"
    if stamp.is_file() and stamp.stat().st_mtime >= lock.stat().st_mtime:
        return env
    say(f"setup: building {shown(env)} from {lock.relative_to(ROOT)}")
    stamp.unlink(missing_ok=True)
    python = env / "bin" / "python"
    if not python.exists():
        check([sys.executable, "-m", "venv", str(env)])
    pip = [str(python), "-m", "pip"]
    proc = subprocess.run(pip + ["install", "--quiet", "--disable-pip-version-check", "--no-deps",
                                 "--require-hashes", "-r", str(lock)], stderr=subprocess.PIPE, text=True)
    # pip's note about the lock's comment-only lines is noise.
    sys.stderr.write("".join(line for line in proc.stderr.splitlines(True)
                             if "is ignored: it is neither a file nor a directory" not in line))
    if proc.returncode != 0:
        raise RunError(f"pip could not install {lock.relative_to(ROOT)} into {env} (its message is above); "
                       "without network use a wheel folder: PIP_FIND_LINKS=requirements/wheels PIP_NO_INDEX=1")
    check(pip + ["check"])
    stamp.touch()
    return env


def check(cmd: list) -> None:
    code = subprocess.run(cmd, cwd=ROOT).returncode
    if code != 0:
        raise RunError(f"`{shlex.join(map(str, cmd))}` failed (exit {code}); its message is above")


def image_inputs() -> list:
    """Every file whose change must give an image a new tag: the code and the configs."""
    return sorted(str(p.relative_to(ROOT)) for d in ("services", "configs") for p in (ROOT / d).rglob("*")
                  if p.is_file() and p.suffix in (".py", ".yaml") and "__pycache__" not in p.parts)


def lock_file(s: Settings, kind: str) -> str:
    flavour = f"-{s.torch_flavour}" if s.torch_flavour and kind == "train" else ""
    return f"requirements/{kind}{flavour}.lock"


def image(s: Settings, kind: str) -> str:
    """The image tag: a digest of what goes into it (Dockerfile, lock file, code), so a stage never
    runs stale code: a changed input means a missing tag, and a missing image is built first."""
    h = hashlib.sha256()
    for f in [f"Dockerfile.{kind}", lock_file(s, kind), *image_inputs()]:
        h.update((ROOT / f).read_bytes())
    return f"{IMAGES[kind]}:{h.hexdigest()[:12]}"


def build_image(s: Settings, kind: str) -> None:
    tag = image(s, kind)
    say(f"images: building {tag} from Dockerfile.{kind} and {lock_file(s, kind)}")
    cmd = s.docker + ["build", "-f", f"Dockerfile.{kind}", "-t", tag, "-t", f"{IMAGES[kind]}:latest"]
    if s.base_image:
        cmd += ["--build-arg", f"BASE_IMAGE={s.base_image}"]
    if s.torch_flavour and kind == "train":
        cmd += ["--build-arg", f"TORCH_FLAVOUR={s.torch_flavour}"]
    if s.local_wheels:
        cmd += ["--build-arg", "LOCAL_WHEELS=1"]
    if s.extra_ca:
        cmd += ["--secret", f"id=extra_ca,src={s.extra_ca}"]
    code = subprocess.run(cmd + ["."], cwd=ROOT).returncode
    if code != 0:
        raise RunError(f"building {tag} failed (exit {code}); the build's message is above")


def ensure_image(s: Settings, kind: str) -> None:
    tag = image(s, kind)
    if call(s.docker + ["image", "inspect", tag], timeout=60).returncode != 0:
        say(f"images: {tag} is not built yet; building it first")
        build_image(s, kind)


# ------------------------------------------------------------------------------ running a stage
def compose_env(s: Settings) -> dict:
    return {**os.environ, "HOST_UID": s.host_uid, "HOST_GID": s.host_gid, "TB_PORT": s.tb_port,
            "TRAIN_TAG": image(s, "train").split(":")[1], "CONVERT_TAG": image(s, "convert").split(":")[1]}


def check_compose_file(s: Settings, gpu: bool, root: Path = ROOT) -> None:
    """Compose reads the file itself, engine or not: a file it rejects is one line before any work."""
    env = {**compose_env(s), "TRAIN_TAG": "check", "CONVERT_TAG": "check"}
    proc = call(s.compose + compose_files(gpu) + ["config", "--quiet"], cwd=root, env=env, timeout=120)
    if proc.returncode != 0:
        why = " ".join(proc.stderr.split())[:300] or f"exit {proc.returncode}"
        raise RunError(f"Compose rejects docker-compose.yml ({why}); fix the file (`git diff docker-compose.yml` "
                       "shows what changed), or run the stages natively with RUNNER=local")


def git_state() -> dict:
    commit = call(["git", "rev-parse", "HEAD"], cwd=ROOT).stdout.strip() or "unknown"
    dirty = call(["git", "status", "--porcelain", "--untracked-files=no"], cwd=ROOT).stdout.strip()
    return {"PIPELINE_GIT_COMMIT": commit, "PIPELINE_GIT_DIRTY": "1" if dirty else "0"}


def stage_command(s: Settings, stage: str) -> list:
    cmd = ["python", "-m", f"services.{stage}", "--config", s.config]
    if s.experiment:
        cmd += ["--experiment", s.experiment]
    if s.force or (stage == "fit" and s.fresh):
        cmd.append("--force")  # for fit, --force is --fresh
    return cmd + s.args


def compose_run(s: Settings, service: str, command: list, gpu: bool, log=None) -> int:
    """`compose run` of one service. Against podman, `compose run --rm` reports exit 0 for a failed
    container, so run without --rm, read the exit code from the container itself, show its last
    log lines if it failed, then remove it."""
    name = f"{s.name}-{service}-{os.getpid()}"
    env = {"PIPELINE_OFFLINE": "1" if s.offline else "0", "PIPELINE_HOST": socket.gethostname(),
           "PIPELINE_CONTAINER": name, **git_state()}  # the lock names the container to stop
    if "CUDA_VISIBLE_DEVICES" in os.environ:  # a sweep's trial: the GPUs Ray gave it, of the ones mounted
        env["CUDA_VISIBLE_DEVICES"] = os.environ["CUDA_VISIBLE_DEVICES"]
    cmd = s.compose + compose_files(gpu) + ["run", "--name", name]
    for k, v in env.items():
        cmd += ["-e", f"{k}={v}"]
    subprocess.run(cmd + [service, *command], cwd=ROOT, env=compose_env(s), stdout=log, stderr=log)
    inspect = call(s.docker + ["inspect", "-f", "{{.State.ExitCode}}", name], timeout=60)
    if inspect.returncode != 0:
        print(f"{service}: the container did not start; Compose's message is above (without an NVIDIA runtime "
              "use GPU=0, the CPU override; `make doctor` checks the setup)", file=sys.stderr)
        return 125
    code = int(inspect.stdout.strip() or 1)
    if code != 0:
        logs = call(s.docker + ["logs", name], timeout=120)
        tail = last_lines(logs.stdout + logs.stderr)
        print(f"{service}: the container failed (exit {code}); its last log lines:", file=sys.stderr)
        print("\n".join(f"  | {line}" for line in tail), file=sys.stderr)
    call(s.docker + ["rm", name], timeout=120)
    return code


def last_lines(text: str, n: int = LOG_TAIL) -> list:
    """The last n non-blank lines, progress bars' carriage returns made into line ends."""
    return [line for line in text.replace("\r", "\n").splitlines() if line.strip()][-n:]


def run_stage(s: Settings, stage: str, runner: str, gpu: bool = False, log=None) -> int:
    """One stage in its container or local environment; its exit code. With `log` (an open file),
    its output goes there instead of the terminal (the sweep engine's trials)."""
    kind = STAGES[stage]
    if runner == "docker":
        ensure_image(s, kind)
        return compose_run(s, stage, stage_command(s, stage), gpu, log)
    python = ensure_env(s, kind) / "bin" / "python"
    env = {**os.environ, "PIPELINE_RUNNER": "local", "PIPELINE_OFFLINE": "1" if s.offline else "0"}
    return subprocess.run([str(python), *stage_command(s, stage)[1:]], cwd=ROOT, env=env,
                          stdout=log, stderr=log).returncode


def stopped(stage: str, code: int, tail=None) -> str:
    """The chain's last word when a stage fails."""
    if not tail:
        return f"train: stopped at stage '{stage}' (exit {code}); its messages are above"
    return "\n".join([f"train: stopped at stage '{stage}' (exit {code}); its last log lines:",
                      *(f"  | {line}" for line in tail)])


def run_chain(s: Settings, stages=CHAIN, runner=None, gpu=None, log_path=None) -> tuple[int, str]:
    """The stages in order, stopping at the first that fails: (exit code, failed stage or "").
    With log_path every stage's output is appended there, and a failure quotes its last lines."""
    runner = runner or choose_runner(s)[0]
    gpu = choose_gpu(s)[0] if gpu is None and runner == "docker" else bool(gpu)
    for stage in stages:
        if log_path is None:
            code = run_stage(s, stage, runner, gpu)
        else:
            with open(log_path, "a") as log:
                code = run_stage(s, stage, runner, gpu, log)
        if code != 0:
            tail = last_lines(Path(log_path).read_text(errors="replace")) if log_path else None
            print(stopped(stage, code, tail), file=sys.stderr)
            return code, stage
    return 0, ""


# ------------------------------------------------------------------------------ targets
def known_experiments() -> list:
    return sorted(p.stem for p in (ROOT / "configs").glob("*.yaml"))


def check_experiment(s: Settings) -> None:
    if not (ROOT / s.config).is_file():
        raise RunError(f"config file {s.config} not found; use configs/<exp>.yaml (EXP=<exp> in Make), "
                       f"known experiments: {', '.join(known_experiments()) or 'none'}")


def announce(s: Settings) -> tuple[str, bool]:
    """Choose runner and GPU once, say both in one line, check what Compose will need."""
    runner, why = choose_runner(s)
    gpu, line = False, f"runner: {runner} ({why})"
    if runner == "docker":
        gpu, gpu_why = choose_gpu(s)
        check_compose_file(s, gpu)
        line += f"; {gpu_why}"
    say(line)
    return runner, gpu


def target_stage(s: Settings, stage: str) -> int:
    check_experiment(s)
    runner, gpu = announce(s)
    return run_stage(s, stage, runner, gpu)


def target_train(s: Settings) -> int:
    check_experiment(s)
    runner, gpu = announce(s)
    return run_chain(s, CHAIN, runner, gpu)[0]


def target_tensorboard(s: Settings) -> int:
    port = check_tb_port(s.tb_port)
    runner, gpu = announce(s)
    if runner == "docker":
        ensure_image(s, "train")
        code = subprocess.run(s.compose + compose_files(gpu) + ["up", "tensorboard"], cwd=ROOT,
                              env=compose_env(s)).returncode
    else:
        logdir = Path(os.environ.get("PIPELINE_ROOT", ROOT)) / "runs"
        tb = ensure_env(s, "train") / "bin" / "tensorboard"
        code = subprocess.run([str(tb), "--logdir", str(logdir), "--host", "127.0.0.1", "--port", str(port)]).returncode
    if code not in (0, 130) and port_taken(port):  # taken while it started: say so in our words too
        raise RunError(tb_port_line(port))
    return code


def check_tb_port(value: str) -> int:
    """TB_PORT is a port this user may open and nothing listens on yet: checked here, not left to
    TensorBoard's (or Compose's) own lines and exit 255."""
    if not value.strip().isdigit() or not 1 <= int(value) <= 65535:
        raise RunError(f"TB_PORT={value} is not a port; use a number from 1024 to 65535, e.g. TB_PORT=6007")
    port = int(value)
    if port < 1024 and os.getuid() != 0:
        raise RunError(f"TB_PORT={port} is a privileged port (below 1024) that only root may open; "
                       f"use TB_PORT=6006 or another number from 1024 on")
    if port_taken(port):
        raise RunError(tb_port_line(port))
    return port


def port_taken(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        # as a server binds (TensorBoard does): only a listener counts, not connections closing
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return True
    return False


def tb_port_line(port: int) -> str:
    return (f"TB_PORT={port}: port {port} on 127.0.0.1 is already in use (another TensorBoard, or another "
            f"program); stop that, or choose another port: make tensorboard TB_PORT={port + 1}")


def target_docs(s: Settings) -> int:
    """docs/ as a site in artifacts/docs/site/ (MkDocs Material from the tools lock, --strict), then
    served on 127.0.0.1:DOCS_PORT. DOCS_SERVE=0 only builds: the site opens from the file as well."""
    import functools
    import http.server
    port, serve = os.environ.get("DOCS_PORT") or "8000", flag("DOCS_SERVE", os.environ.get("DOCS_SERVE", "1"))
    site = Path(os.environ.get("PIPELINE_ROOT", ROOT)) / "artifacts" / "docs" / "site"
    server = None
    if serve:  # the port is taken before the build, so a busy one is said at once and cannot be lost after
        handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(site))
        try:
            server = http.server.ThreadingHTTPServer(("127.0.0.1", int(port)), handler)
        except (ValueError, OverflowError):
            raise RunError(f"DOCS_PORT={port} is not a port number; use e.g. DOCS_PORT=8001") from None
        except OSError as e:
            raise RunError(f"DOCS_PORT={port}: cannot serve on 127.0.0.1:{port} ({e.strerror}; another `make docs`?); "
                           f"stop it, or choose another port: make docs DOCS_PORT={int(port) + 1}") from None
    mkdocs = ensure_env(s, "tools") / "bin" / "mkdocs"
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}  # Material's banner about its successor, on every build
    code = subprocess.run([str(mkdocs), "build", "--strict", "--config-file", str(ROOT / "mkdocs.yml"),
                           "--site-dir", str(site)], cwd=ROOT, env=env).returncode
    if code != 0:
        if server:
            server.server_close()
        raise RunError(f"mkdocs could not build docs/ (exit {code}); its message is above")
    if not server:
        say(f"docs: built {shown(site)}/index.html (DOCS_SERVE=0: not served; it opens from the file)")
        return 0
    say(f"docs: built {shown(site)}/; serving http://127.0.0.1:{port}/ (Ctrl-C stops it)")
    with server:
        server.serve_forever()
    return 0


def target_doctor(s: Settings) -> int:
    gpu = s.gpu or ("1" if nvidia_found(s) else "0")
    env = {**compose_env(s), "DOCKER": shlex.join(s.docker), "GPU": gpu,
           "COMPOSE": shlex.join(s.compose + compose_files(gpu == "1"))}
    return subprocess.run([sys.executable, "-m", "services.doctor", "--config", s.config, "--image",
                           image(s, "train")], cwd=ROOT, env=env).returncode


def target_wheels(s: Settings) -> int:
    for kind in ("train", "convert"):
        say(f"wheels: {lock_file(s, kind)} -> requirements/wheels/")
        check([sys.executable, "-m", "pip", "download", "--quiet", "--disable-pip-version-check", "--no-deps",
               "--require-hashes", "-d", "requirements/wheels", "-r", lock_file(s, kind)])
    return 0


def target_lock(s: Settings) -> int:
    uv = ensure_env(s, "tools") / "bin" / "uv"
    for src in sorted((ROOT / "requirements").glob("*.in")):
        if src.stem == "train-packages":  # shared by train.in and train-cu12.in, no lock of its own
            continue
        say(f"lock: requirements/{src.stem}.lock")
        check([str(uv), "pip", "compile", "--quiet", "--generate-hashes", "--python-version", "3.11",
               "--python-platform", "x86_64-manylinux_2_28", "--override", "requirements/overrides.txt",
               "-o", f"requirements/{src.stem}.lock", f"requirements/{src.stem}.in"])
    return 0


def apt_install(packages: list) -> None:
    sudo = [] if os.getuid() == 0 else ["sudo"]
    quiet = ["apt-get", "install", "-y", "-qq", *packages]
    if call(sudo + quiet).returncode != 0:
        check(sudo + ["apt-get", "update", "-qq"])
        check(sudo + quiet)


def test_deps(s: Settings) -> None:
    """The TensorBoard dashboard and the report are checked in a real headless browser (Debian's
    chromium), the report's LaTeX tables with Debian's pdflatex, a read-only folder with chattr; without a
    Docker engine the live container test runs the real Compose file against podman (Debian's)."""
    if not shutil.which("chromium"):
        say("test: installing Debian's chromium for the dashboard and report tests")
        apt_install(["chromium"])
    if not shutil.which("chattr"):  # an output folder the stage cannot write: `chattr +i` (Debian's e2fsprogs)
        say("test: installing Debian's e2fsprogs (chattr) for the unwritable-folder tests")
        apt_install(["e2fsprogs"])
    if not shutil.which("pdflatex"):  # tables.tex must compile with a real LaTeX (booktabs)
        say("test: installing Debian's LaTeX (texlive-latex-base, -recommended) for the report test")
        apt_install(["texlive-latex-base", "texlive-latex-recommended"])
    if not engine_answers(s) and not shutil.which("podman"):
        say("test: no Docker engine; installing Debian's podman for the live container test")
        apt_install(["podman", "buildah", "fuse-overlayfs", "slirp4netns", "uidmap", "debootstrap", "runc"])


def target_test(s: Settings, fast: bool = False) -> int:
    for env in ("train", "convert", "tools"):
        ensure_env(s, env)
    if not fast:
        test_deps(s)
    code = lint(s)
    if code:
        return code
    python = s.venv / "train" / "bin" / "python"
    # One worker per core (at most 4), spread group by group (tests/conftest.py): the demo training and
    # what shares it on one worker, each other file whole on one (its module fixtures built once, not
    # once per worker), the longest first, so the containers and the other trainings run beside the
    # demo's.
    # The quick tier's tests wait on subprocesses, servers and locks part of their time: one worker more
    # than cores fills those gaps (2:26 against 2:31 on 2 cores). The whole suite's trainings keep every
    # core busy on their own; more workers there only add more at once.
    workers = min((os.cpu_count() or 1) + (1 if fast else 0), 4)
    spread = [] if workers < 2 else ["-n", str(workers), "--dist", "loadscope", "--no-loadscope-reorder"]
    tier = ["-m", "not slow and not containers"] if fast else []
    env = {**os.environ, "PIPELINE_VENV": str(s.venv)}
    # The suite starts some 200 to 600 stage processes: with PYTHONDONTWRITEBYTECODE set (as on CI's
    # machines) each compiles the project's modules anew, and each pytest worker rewrites every test
    # module. Cached bytecode (__pycache__, ignored by git) is Python's default and changes no result.
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    if not fast:  # the whole suite: what it installs or builds must be there (tests/helpers.py require())
        env["CI"] = "1"
    # -rs: the reasons of the skips left (a GPU, ../shared, mounting), listed at the end
    return subprocess.run([str(python), "-m", "pytest", *tier, *spread, "-rs", "--durations=12", "tests"], cwd=ROOT,
                          env=env).returncode


def lint(s: Settings) -> int:
    """ruff, and the import contracts of pyproject.toml (the layers), from the tools environment."""
    tools = s.venv / "tools" / "bin"
    say("test: ruff check; lint-imports (the layers in pyproject.toml)")
    code = subprocess.run([str(tools / "ruff"), "check", "--quiet", "."], cwd=ROOT).returncode
    if code:
        say("test: ruff found the problems above; `.venv/tools/bin/ruff check --fix .` mends many")
        return code
    env = {**os.environ, "PYTHONPATH": str(ROOT)}  # it reads the packages from the checkout
    return subprocess.run([str(tools / "lint-imports"), "--no-cache"], cwd=ROOT, env=env).returncode


def target_sweep(s: Settings) -> int:
    """Every (variant, seed) trial of configs/sweeps/<SWEEP>.yaml as a whole chain, scheduled by Ray
    (services/sweep/). The driver runs in the train environment, which has Ray; the environments
    every trial needs are built here first, once, not by trials racing each other."""
    if not s.sweep:
        raise RunError("make sweep needs SWEEP=<name> (configs/sweeps/<name>.yaml); known sweeps: "
                       f"{', '.join(known_sweeps()) or 'none'}")
    only = ["--trials", s.trials] if s.trials else []
    if s.plan:  # reading the sweep needs the train environment alone; no runner, no Ray, no bytecode written
        python = ensure_env(s, "train") / "bin" / "python"
        return subprocess.run([str(python), "-m", "services.sweep", "--plan", *only, f"configs/sweeps/{s.sweep}.yaml",
                               *s.args], cwd=ROOT, env={**os.environ, "PYTHONDONTWRITEBYTECODE": "1"}).returncode
    runner, gpu = announce(s)
    for kind in ("train", "convert") if runner == "local" else ():
        ensure_env(s, kind)
    python = ensure_env(s, "train") / "bin" / "python"
    env = {**os.environ, "RUNNER": runner, "GPU": "1" if gpu else "0"}
    return subprocess.run([str(python), "-m", "services.sweep", *only, f"configs/sweeps/{s.sweep}.yaml", *s.args],
                          cwd=ROOT, env=env).returncode


def known_sweeps() -> list:
    return sorted(p.stem for p in (ROOT / "configs" / "sweeps").glob("*.yaml"))


def target_report(s: Settings) -> int:
    """artifacts/<EXP or SWEEP>/report/: tables (md, LaTeX), figures (pdf, png) and one html page."""
    what = ["--sweep", s.sweep] if s.sweep else ["--config", s.config] + (["--experiment", s.experiment]
                                                                          if s.experiment else [])
    if not s.sweep:
        check_experiment(s)
    python = ensure_env(s, "train") / "bin" / "python"
    return subprocess.run([str(python), "-m", "services.report", *what, *s.args], cwd=ROOT).returncode


def target_predict(s: Settings) -> int:
    """Detections drawn for any format into artifacts/<EXP>/predict/; rknn runs in the convert
    environment (the toolkit's simulator), the others in the train environment."""
    if not s.source:
        raise RunError("make predict needs SOURCE=<image, folder or video>, e.g. SOURCE=datasets/demo/yolo/val/images")
    fmt = s.format or "pt"
    if fmt not in ("pt", "onnx", "rknn"):
        raise RunError(f"FORMAT={fmt} is not a model format; use FORMAT=pt, FORMAT=onnx or FORMAT=rknn")
    check_experiment(s)
    python = ensure_env(s, "convert" if fmt == "rknn" else "train") / "bin" / "python"
    cmd = [str(python), "-m", "services.predict", "--config", s.config, "--source", s.source, "--format", fmt]
    if s.experiment:
        cmd += ["--experiment", s.experiment]
    return subprocess.run(cmd + s.args, cwd=ROOT).returncode


def target_help(s: Settings) -> int:
    say('Usage: make <target> [EXP=<name>] [ARGS="section.key=value ..."] [RUNNER=docker|local] [FORCE=1]\n')
    for line in (ROOT / "Makefile").read_text().splitlines():
        if "## " in line and line[:1].isalpha():
            target, text = line.split(":", 1)[0], line.split("## ", 1)[1]
            say(f"  {target:<12} {text.replace('$(TB_PORT)', s.tb_port)}")
    say(f"""
Variables:
  EXP=<name>    experiment: configs/<name>.yaml (default: citypersons; demo = the embedded mini run)
  ARGS="..."    config overrides, e.g. ARGS="dataset.selection_fraction=0 dataset.seed=1"
  RUNNER=...    docker: each stage in its Compose service; local: in {shown(s.venv)}/train or {shown(s.venv)}/convert
                (default: docker when a Docker engine answers, else local)
  GPU=1|0       docker: the GPU reservation (default: 1 when the NVIDIA runtime is found)
  FORCE=1       rerun a stage even when its manifest says inputs and config are unchanged
  OFFLINE=1     never touch the network: missing downloads are listed, not fetched
  FRESH=1       fit: start training anew instead of resuming (the old run is moved aside)
  SWEEP=<name>  make sweep / make report: configs/sweeps/<name>.yaml (RAY_ADDRESS: join a Ray cluster)
  PLAN=1        make sweep: print every trial, its datasets, stages and training-time estimate; start nothing
  TRIALS=...    make sweep: only these trials, e.g. TRIALS=yolo11n-640-s0,yolo11n-640-s1 (every trial is still checked)
  SOURCE=...    make predict: an image, a folder of images or a video; FORMAT=pt|onnx|rknn (default pt)
  VENV=<dir>    where the local environments live (default: .venv)
  DOCS_PORT=... make docs: the port on 127.0.0.1 (default 8000); DOCS_SERVE=0 only builds
  Yes/no variables take 1/true/yes or 0/false/no.""")
    return 0


TARGETS = {
    "help": target_help,
    "train": target_train,
    "demo": lambda s: target_train(dataclasses.replace(s, exp="demo")),
    **{stage: (lambda s, stage=stage: target_stage(s, stage)) for stage in STAGES},
    "tensorboard": target_tensorboard,
    "docs": target_docs,
    "sweep": target_sweep,
    "report": target_report,
    "predict": target_predict,
    "images": lambda s: [build_image(s, kind) for kind in IMAGES] and 0,
    "image-train": lambda s: build_image(s, "train") or 0,
    "image-convert": lambda s: build_image(s, "convert") or 0,
    "print-images": lambda s: say(f"train={image(s, 'train')} convert={image(s, 'convert')}") or 0,
    "doctor": target_doctor,
    "setup": lambda s: [ensure_env(s, env) for env in ("train", "convert")] and 0,
    "wheels": target_wheels,
    "lock": target_lock,
    "test": target_test,
    "test-fast": lambda s: target_test(s, fast=True),
    "test-deps": lambda s: test_deps(s) or 0,
}


def resolve(target: str) -> str:
    target = ALIASES.get(target, target)
    if target not in TARGETS:
        near = difflib.get_close_matches(target, list(TARGETS) + list(ALIASES), n=1)
        hint = f"did you mean '{near[0]}'? " if near else ""
        raise RunError(f"unknown target '{target}'; {hint}`make help` lists them")
    return target


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1:
        print("usage: python3 -m services.run <target>   (`make help` lists the targets)", file=sys.stderr)
        return 2
    try:
        target = resolve(argv[0])
        s = settings()
        return TARGETS[target](s)
    except RunError as e:
        print(f"runner: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("runner: interrupted", file=sys.stderr)
        return 130
