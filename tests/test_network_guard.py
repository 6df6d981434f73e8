"""The loopback guard the suite runs under really refuses non-loopback sends."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

GUARD = Path(sys.prefix) / "lib" / "saferule_loopback_guard.so"

# The child first proves the guard is mapped, so that without it nothing is ever sent.
PROBE = r"""
import socket, sys
if "saferule_loopback_guard" not in open("/proc/self/maps").read():
    sys.exit(3)
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.sendto(b"ok", ("127.0.0.1", 9))
try:
    s.sendto(b"no", ("192.0.2.1", 9))  # TEST-NET-1, refused before it reaches the kernel
except PermissionError:
    sys.exit(0)
sys.exit(4)
"""


def test_guard_refuses_non_loopback_and_logs_it(tmp_path: Path) -> None:
    assert GUARD.exists(), "make setup builds the guard into .venv/lib"
    log = tmp_path / "guard.log"
    env = dict(os.environ, LD_PRELOAD=str(GUARD), SAFERULE_NET_GUARD_LOG=str(log))
    proc = subprocess.run([sys.executable, "-c", PROBE], env=env, timeout=60)
    assert proc.returncode == 0
    assert "sendto to 192.0.2.1 port 9 refused" in log.read_text()
    assert (tmp_path / "guard.log.ok").read_text().strip()
