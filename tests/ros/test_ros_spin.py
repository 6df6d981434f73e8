"""run_node's exit discipline: a node asked to stop exits even if middleware teardown hangs."""

from __future__ import annotations

import subprocess
import sys
import time


def test_a_hanging_teardown_is_cut_off_after_the_grace_period() -> None:
    hang = ("from saferule_ros.spin import _exit_if_teardown_hangs\n"
            "import time\n"
            "_exit_if_teardown_hangs(0, 0.3)\n"
            "time.sleep(30)\n"
            "raise SystemExit(7)\n")
    started = time.monotonic()
    done = subprocess.run([sys.executable, "-c", hang], capture_output=True, text=True, timeout=25)
    assert done.returncode == 0, done.stderr
    assert "did not finish within 0.3 s" in done.stderr
    assert time.monotonic() - started < 25


def test_a_teardown_that_finishes_is_not_cut_off() -> None:
    quick = ("from saferule_ros.spin import _exit_if_teardown_hangs\n"
             "import time\n"
             "watchdog = _exit_if_teardown_hangs(0, 0.5)\n"
             "watchdog.cancel()\n"
             "time.sleep(1.0)\n"
             "raise SystemExit(7)\n")
    done = subprocess.run([sys.executable, "-c", quick], capture_output=True, text=True, timeout=25)
    assert done.returncode == 7
    assert "did not finish" not in done.stderr
