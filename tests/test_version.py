"""One distribution, one version: what every --version prints."""

from __future__ import annotations

import re
from pathlib import Path

import evloop
import portalloc

ROOT = Path(__file__).resolve().parent.parent


def test_version_is_the_one_pyproject_names_installed_or_not() -> None:
    # From a clone (PYTHONPATH) it is the source tree's fallback, installed
    # it is the metadata's: both must be pyproject's.
    text = (ROOT / "pyproject.toml").read_text()
    want = re.search(r'^version = "([^"]+)"', text, re.M).group(1)
    assert evloop.__version__ == want
    assert portalloc.__version__ == want
