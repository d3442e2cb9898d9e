"""`python3 -m services.run <target>`: what every `make` target calls (see runner.py)."""
import sys

from .runner import main

sys.exit(main())
