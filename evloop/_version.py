"""The version of the distribution (``evloop``, which holds evloop,
portalloc and scanner), installed or not: ``evloop.__version__``."""

from __future__ import annotations

import os
import sys

# The version this source tree is; used when the distribution is not
# installed (run from a clone with PYTHONPATH).
_SOURCE_VERSION = "0.2.0"


def version() -> str:
    """The installed distribution's version, else the source tree's."""
    if not _may_be_installed():
        return _SOURCE_VERSION
    try:
        from importlib.metadata import PackageNotFoundError
        from importlib.metadata import version as _dist_version
        try:
            return _dist_version("evloop")
        except PackageNotFoundError:
            return _SOURCE_VERSION
    except ImportError:
        return _SOURCE_VERSION


def _may_be_installed() -> bool:
    """False only if no ``sys.path`` entry holds metadata of ours.

    Importing importlib.metadata (it parses metadata with the email
    package) takes ~25 ms, a third of the server's start and of every
    ``portalloc`` command, and from a clone it finds nothing.  Its finder
    looks for ``<name>-<version>.dist-info`` / ``<name>.egg-info`` in each
    path entry: a directory listing tells the same for far less.  A path
    entry that is a file (a zip) is left to importlib.metadata.
    """
    for entry in sys.path:
        try:
            names = os.listdir(entry or ".")
        except NotADirectoryError:
            return True
        except OSError:
            continue
        for name in names:
            low = name.lower()
            if low.startswith("evloop") and low.endswith((".dist-info", ".egg-info")):
                return True
    return False
