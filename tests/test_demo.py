"""examples/demo.py: the README's first command must work and say so."""

from __future__ import annotations

import subprocess
import sys

import pytest
from conftest import ROOT


@pytest.mark.timeout(60)
def test_demo_walks_through_every_step_and_exits_0():
    proc = subprocess.run([sys.executable, str(ROOT / "examples" / "demo.py")],
                          capture_output=True, text=True, timeout=50, cwd=str(ROOT))
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    assert "got back 'hello, event loop'" in out
    assert "1 open, 19 refused" in out
    assert "allocated to demo-echo run by" in out
    assert "LIST after the service released its port: 0 allocation(s)" in out
    assert proc.stderr == ""
