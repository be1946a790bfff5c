"""``python -m portalloc``: the ``portalloc`` command line (see `portalloc.cli`)."""

from .cli import main

raise SystemExit(main())
