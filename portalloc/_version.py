"""The version of the distribution (``evloop``), installed or not."""

from __future__ import annotations

# The version this source tree is; used when the distribution is not
# installed (run from a clone with PYTHONPATH).
_SOURCE_VERSION = "0.2.0"


def version() -> str:
    """The installed distribution's version, else the source tree's."""
    try:
        from importlib.metadata import PackageNotFoundError
        from importlib.metadata import version as _dist_version
        try:
            return _dist_version("evloop")
        except PackageNotFoundError:
            return _SOURCE_VERSION
    except ImportError:
        return _SOURCE_VERSION
