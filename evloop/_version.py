"""The version of the distribution (``evloop``, which holds evloop,
portalloc and scanner), installed or not: ``evloop.__version__``."""

from __future__ import annotations

import os
import sys

# The version this source tree is; used when the distribution is not
# installed (run from a clone with PYTHONPATH).
_SOURCE_VERSION = "0.2.0"


def version() -> str:
    """The installed distribution's version, else the source tree's.

    Read the way ``importlib.metadata.version("evloop")`` finds it -- the
    first ``evloop-<version>.dist-info`` or ``evloop.egg-info`` along
    ``sys.path``, its ``Version:`` line -- but without importing
    importlib.metadata, which parses with the email package and takes about
    25 ms: a third of the start of the server and of every ``portalloc``
    command, which all print or log the version.  A path entry that is a
    file (a zip) is left to importlib.metadata.
    """
    for entry in sys.path:
        try:
            names = os.listdir(entry or ".")
        except NotADirectoryError:
            return _from_importlib()
        except OSError:
            continue
        for name in names:
            low = name.lower()
            if low.startswith("evloop-") and low.endswith(".dist-info"):
                found = _version_line(os.path.join(entry or ".", name, "METADATA"))
            elif low == "evloop.egg-info":
                found = _version_line(os.path.join(entry or ".", name, "PKG-INFO"))
            else:
                continue
            if found is not None:
                return found
    return _SOURCE_VERSION


def _version_line(path: str) -> str | None:
    """The ``Version:`` of a metadata file (in its header), or None."""
    try:
        with open(path, encoding="utf-8") as f:
            for line in f:
                if not line.strip():
                    break                       # the header ends at a blank line
                if line.startswith("Version:"):
                    return line[len("Version:"):].strip()
    except OSError:
        pass
    return None


def _from_importlib() -> str:
    try:
        from importlib.metadata import PackageNotFoundError
        from importlib.metadata import version as _dist_version
        try:
            return _dist_version("evloop")
        except PackageNotFoundError:
            return _SOURCE_VERSION
    except ImportError:
        return _SOURCE_VERSION
