"""``python -m scanner``: see `scanner.cli`."""

import sys

from .cli import main

sys.exit(main(prog="python -m scanner"))
