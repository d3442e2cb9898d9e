"""The command line every stage shares: --config, --force and section.key=value overrides."""
import argparse
import sys

from . import config
from .log import user_errors


def stage_main(module: str, doc: str, stage: str, run, argv=None, *, force_flags=("--force",),
               force_help: str = "run again even when the outputs are up to date", subcommands=None) -> None:
    """`python -m services.<module> --config configs/<exp>.yaml [--force] [section.key=value ...]`:
    validate the config before any work, then call run(cfg, force=...) with UserErrors as one line.

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
    p.add_argument(*force_flags, action="store_true", dest="force", help=force_help)
    p.add_argument("overrides", nargs="*", metavar="section.key=value")
    a = p.parse_args(argv)
    with user_errors(stage):
        run(config.load(a.config, a.overrides), force=a.force)
