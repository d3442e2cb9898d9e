"""The command line every stage shares: --config, --force and section.key=value overrides."""
import argparse
import sys

from . import config
from .log import user_errors


def stage_main(module: str, doc: str, stage: str, run, argv=None) -> None:
    """`python -m services.<module> --config configs/<exp>.yaml [--force] [section.key=value ...]`:
    validate the config before any work, then call run(cfg, force=...) with UserErrors as one line."""
    p = argparse.ArgumentParser(prog=f"python -m services.{module}", description=doc.strip().splitlines()[0])
    p.add_argument("--config", required=True, help="configs/<exp>.yaml")
    p.add_argument("--force", action="store_true", help="run again even when the outputs are up to date")
    p.add_argument("overrides", nargs="*", metavar="section.key=value")
    a = p.parse_args(sys.argv[1:] if argv is None else argv)
    with user_errors(stage):
        run(config.load(a.config, a.overrides), force=a.force)
