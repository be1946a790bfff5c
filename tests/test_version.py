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


def test_an_installed_version_is_read_without_importlib_metadata(tmp_path) -> None:
    # What pip leaves for an install: <name>-<version>.dist-info/METADATA.
    # It comes first on the path, as site-packages would, and wins over the
    # source tree's fallback; importlib.metadata (25 ms) is never imported.
    import subprocess
    import sys
    info = tmp_path / "evloop-9.9.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: evloop\nVersion: 9.9\n\nText\n")
    code = ("import sys; sys.path.insert(0, sys.argv[1]); import evloop, portalloc; "
            "print(evloop.__version__, portalloc.__version__, 'importlib.metadata' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code, str(tmp_path)], capture_output=True,
                         text=True, cwd=ROOT, timeout=30, check=True).stdout.split()
    assert out == ["9.9", "9.9", "False"]
