"""The command line every stage shares: --config, --force and section.key=value overrides."""
import argparse
import sys
from contextlib import ExitStack

from . import config, files, lock, paths, space
from .log import info, user_errors

# Stages whose estimate of the space they need is checked here, before they start: the others check
# their own where the large write begins (after deciding that they have work to do).
CHECK_SPACE_FIRST = ("export", "evaluate", "convert")


def stage_main(module: str, doc: str, stage: str, run, argv=None, *, force_flags=("--force",),
               force_help: str = "run again even when the outputs are up to date", subcommands=None) -> None:
    """`python -m services.<module> --config configs/<exp>.yaml [--experiment NAME] [--force] [section.key=value ...]`:
    before any work, validate the config (against every stage that reads it), check that the
    stage's folders take a file, take the experiment's lock (lock.py) and check the space the stage
    needs; then call run(cfg, force=...), with UserErrors, a full disk and unwritable folders as
    one line and exit 2.

    force_flags: the spellings of --force (the training stage also takes --fresh); force_help its help.
    subcommands: {"name": fn(argv)} for `python -m services.<module> name ...`, which parses the rest
    itself; its UserErrors are one line too."""
    argv = sys.argv[1:] if argv is None else argv
    if subcommands and argv[:1] and argv[0] in subcommands:
        with user_errors(stage):
            subcommands[argv[0]](argv[1:])
        return
    epilog = (f"other commands: {', '.join(subcommands)} (python -m services.{module} <command> --help)"
              if subcommands else None)
    p = argparse.ArgumentParser(prog=f"python -m services.{module}", description=doc.strip().splitlines()[0],
                                epilog=epilog)
    p.add_argument("--config", required=True, help="configs/<exp>.yaml")
    p.add_argument("--experiment", metavar="NAME",
                   help="the folder name under artifacts/ and runs/ (default: the config file's name)")
    p.add_argument(*force_flags, action="store_true", dest="force", help=force_help)
    p.add_argument("overrides", nargs="*", metavar="section.key=value")
    a = p.parse_args(argv)
    with user_errors(stage):
        cfg = config.load(a.config, a.overrides, a.experiment)
        space.check_writable(stage, paths.written_by(stage, cfg))
        with ExitStack() as held:
            take_locks(held, stage, cfg)
            clean_up_after_killed_runs(stage, cfg)
            if stage in CHECK_SPACE_FIRST:
                space.require(stage, space.estimate(stage, cfg))
            held.enter_context(space.disk_full_explained(stage, cfg))
            run(cfg, force=a.force)


def take_locks(held: ExitStack, stage: str, cfg: dict) -> None:
    """The experiment's lock: a second run of it is refused at once. The dataset stage also holds its
    dataset folders, which other experiments share: their dataset stages wait for it (a sweep's
    trials check one dataset together), and the experiment's lock comes first, so no two wait on
    each other."""
    held.enter_context(lock.held(paths.artifacts_dir(cfg["experiment"]), stage))
    if stage == "dataset":
        sets = ["coco"] if "coco_person" in cfg["evaluate"]["sets"] else []
        for name in sorted({cfg["dataset"]["name"], *sets}):
            held.enter_context(lock.held(paths.dataset_dir(name), stage, wait=True))


def clean_up_after_killed_runs(stage: str, cfg: dict) -> None:
    """A stage killed mid-write leaves its temporary files (their names carry its pid); every stage
    removes those of runs that are gone before it starts."""
    removed = files.clean_stale_temps(*paths.stage_folders(cfg), depth=3)
    if removed:
        shown = ", ".join(paths.rel(p) for p in removed[:3]) + (", ..." if len(removed) > 3 else "")
        info(stage, f"removed {len(removed)} temporary file(s) left by killed runs: {shown}")
