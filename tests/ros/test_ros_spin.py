"""run_node's exit discipline: a node asked to stop exits 0, promptly and without a traceback, even
when more stop signals arrive while it closes, and even if middleware teardown hangs."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from rosbags.rosbag2 import Reader

from saferule_ros.topics import episode_id_for
from tests.ros.ros_harness import CONFIG_DIR, RobotTopics, node_process, probe_node, spin_until

STOP_WITHIN_S = 5.0


@pytest.mark.parametrize("hang", ["time.sleep(30)",                       # GIL released
                                  "ctypes.PyDLL(None).sleep(30)"])       # GIL held, as in a DDS teardown
def test_a_hanging_teardown_is_cut_off_after_the_grace_period(hang: str) -> None:
    script = ("import ctypes, time\n"
              "from saferule_ros.spin import HardDeadline\n"
              "HardDeadline(0, 0.8)\n"
              f"{hang}\n"
              "raise SystemExit(7)\n")
    started = time.monotonic()
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=25)
    assert done.returncode == 0, done.stderr
    assert "most recent call first" in done.stderr          # where it hung, from faulthandler
    assert time.monotonic() - started < 10


def test_a_teardown_that_finishes_is_not_cut_off() -> None:
    quick = ("from saferule_ros.spin import HardDeadline\n"
             "import time\n"
             "deadline = HardDeadline(0, 0.8)\n"
             "deadline.cancel()\n"
             "time.sleep(1.5)\n"
             "raise SystemExit(7)\n")
    done = subprocess.run([sys.executable, "-c", quick], capture_output=True, text=True, timeout=25)
    assert done.returncode == 7
    assert done.stderr == ""


def test_a_node_process_ends_without_finalization_but_with_its_exit_handlers_and_output() -> None:
    ending = ("import atexit, sys\n"
              "from saferule_ros.spin import _end_process\n"
              "atexit.register(lambda: print('exit handler ran'))\n"
              "print('buffered', end='; ')\n"
              "print('to stderr', end='', file=sys.stderr)\n"
              "_end_process(3)\n"
              "raise SystemExit(7)\n")
    done = subprocess.run([sys.executable, "-c", ending], capture_output=True, text=True, timeout=60)
    assert (done.returncode, done.stdout, done.stderr) == (3, "buffered; exit handler ran\n", "to stderr")


def test_stop_signals_note_a_burst_and_break_only_a_callback_that_does_not_return() -> None:
    from saferule_ros.spin import STOP_SIGNALS, STUCK_CALLBACK_S, StopSignals

    previous = {signum: signal.getsignal(signum) for signum in STOP_SIGNALS}
    stop = StopSignals()
    try:
        stop.install()
        os.kill(os.getpid(), signal.SIGINT)
        os.kill(os.getpid(), signal.SIGINT)   # a terminal's Ctrl-C and launch's forwarded SIGINT
        os.kill(os.getpid(), signal.SIGTERM)  # and launch escalating: only counted
        assert (stop.requested, stop.name, stop.later) == (True, "SIGINT", 2)
        stop.first_at -= STUCK_CALLBACK_S     # still spinning that long after the stop request
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGTERM)
        os.kill(os.getpid(), signal.SIGTERM)  # once out of the spin loop (closing), never again
        assert stop.later == 4 and not stop.spinning
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


@pytest.mark.ros
@pytest.mark.parametrize("gap_s", [0.0, 0.05, 0.15, 0.3])
def test_the_recorder_closes_its_bag_through_a_burst_of_stop_signals(tmp_path: Path, gap_s: float) -> None:
    """SIGINT, SIGINT, SIGTERM `gap_s` apart (launch's SIGINT, the terminal's, launch's SIGTERM),
    landing while the recorder closes its bag or tears down DDS: exit 0 within 5 s, no traceback,
    and a complete bag holding every message."""
    robot, out = "sig_a", tmp_path / "bags"
    ros_args = ["--params-file", str(CONFIG_DIR / "recorder.yaml"), "-p", f"robots:=[{robot}]",
                "-p", f"out_dir:={out}", "-p", "stats_period_s:=0.1"]
    with node_process("recorder", ros_args, tmp_path / "recorder.log") as recorder, \
            probe_node("signal_probe") as (node, executor):
        topics = RobotTopics.create(node, robot)
        spin_until(executor, topics.subscribed, "the recorder's subscriptions", process=recorder)
        published = topics.publish_episode(episode_id_for(robot, 0), steps=40)
        spin_until(executor, lambda: f"received {published}," in recorder.log_text(),
                   f"the recorder to receive {published} messages", process=recorder)
        started = time.monotonic()
        for signum in (signal.SIGINT, signal.SIGINT, signal.SIGTERM):
            recorder.proc.send_signal(signum)
            time.sleep(gap_s)
        try:
            status = recorder.proc.wait(timeout=STOP_WITHIN_S)
        except subprocess.TimeoutExpired:
            status = None
        took = time.monotonic() - started
    log = recorder.log_text()
    assert status == 0, f"exit status {status} after {took:.2f} s:\n{log[-3000:]}"
    assert "Traceback" not in log and "KeyboardInterrupt" not in log, log[-3000:]
    assert "SIGINT: stopping" in log and re.search(rf"stopped: .*'written': {published}", log)
    [bag] = [p for p in out.iterdir() if p.is_dir()]
    assert (bag / "metadata.yaml").is_file()
    reader = Reader(bag)
    reader.open()
    try:
        assert reader.message_count == sum(1 for _ in reader.messages()) == published
    finally:
        reader.close()
