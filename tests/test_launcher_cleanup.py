"""The simulation launcher ends what it started, even when a run hangs.

No Flower here: a stand-in ``flwr`` that prints nothing, and a daemon that
left its parent's tree, are enough to check the deadline and the sweep.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from deploy import local_sim


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


@pytest.mark.skipif(not Path("/proc/self/environ").exists(), reason="needs /proc")
def test_a_daemon_outside_the_tree_is_found_by_its_environment(tmp_path):
    marker = str(tmp_path / "flwr-home")
    pid_file = tmp_path / "daemon.pid"
    # Double fork: the sleeper's parent exits, so it is no descendant of ours.
    subprocess.run(
        ["sh", "-c", f"sleep 60 & echo $! > {pid_file}"],
        env={**os.environ, "FLWR_HOME": marker},
        check=True,
    )
    daemon = int(pid_file.read_text())
    try:
        assert daemon not in local_sim.descendants(os.getpid())
        assert local_sim.processes_with_env("FLWR_HOME", marker) == [daemon]
        assert local_sim.processes_with_env("FLWR_HOME", marker + "-other") == []
    finally:
        os.kill(daemon, signal.SIGKILL)
    deadline = time.monotonic() + 5
    while _alive(daemon) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not _alive(daemon)


def test_a_silent_run_ends_at_its_deadline(tmp_path, monkeypatch):
    # The launcher finds `flwr` next to the interpreter. A stand-in that hangs
    # without printing: a deadline checked per output line would never fire.
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    fake = bin_dir / "flwr"
    fake.write_text("#!/bin/sh\nexec sleep 60\n")
    fake.chmod(0o755)
    monkeypatch.setattr(sys, "executable", str(bin_dir / "python"))
    t0 = time.monotonic()
    with pytest.raises(TimeoutError, match="within 1.0 s"):
        local_sim.flwr_run(tmp_path, "local-sim", {}, dict(os.environ), [], timeout=1.0)
    assert time.monotonic() - t0 < 10


def test_sigterm_runs_the_cleanup_before_the_launcher_ends():
    # `kill <pid>` of a launcher: its finally (stop the SuperLink and Ray's
    # daemons) must run, also when a second SIGTERM arrives during it.
    before = signal.getsignal(signal.SIGTERM)
    cleaned = []
    with pytest.raises(local_sim.Terminated, match="signal 15"):
        with local_sim.terminate_raises():
            try:
                os.kill(os.getpid(), signal.SIGTERM)
                time.sleep(5)  # the handler's exception ends this at once
                cleaned.append("not interrupted")
            finally:
                os.kill(os.getpid(), signal.SIGTERM)
                time.sleep(0.05)
                cleaned.append("cleaned")
    assert cleaned == ["cleaned"]
    assert signal.getsignal(signal.SIGTERM) is before
