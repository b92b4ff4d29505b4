"""`clara up`'s supervisor with real child processes: a crashed child is restarted, one that
keeps crashing stops everything, and a stop reaches every child and its own children (one
that ignores SIGTERM is killed after the grace period)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

from tests.waiting import wait_until

ROOT = Path(__file__).resolve().parents[2]

# Runs a Supervisor over the children given as JSON argv lists; STOP_GRACE cut to 1 s.
RUN_SUPERVISOR = textwrap.dedent(
    """
    import json, sys
    from pathlib import Path
    from cli.supervisor import ChildSpec, Supervisor

    log_dir, children = Path(sys.argv[1]), json.loads(sys.argv[2])
    Supervisor.STOP_GRACE = 1.0
    Supervisor.RESTART_WINDOW = 30.0
    sup = Supervisor([ChildSpec(name, argv) for name, argv in children.items()], log_dir)
    sys.exit(sup.run())
    """
)

CRASH_ONCE = textwrap.dedent(
    """
    import os, sys, time
    marker = sys.argv[1]
    with open(marker + ".starts", "a") as f:
        f.write(f"{os.getpid()}\\n")
    if not os.path.exists(marker):
        open(marker, "w").close()
        sys.exit(7)  # the first start crashes
    time.sleep(600)
    """
)

# Starts a grandchild in the same process group, then waits; ignores SIGTERM if asked.
STUBBORN = textwrap.dedent(
    """
    import signal, subprocess, sys, time
    pidfile, ignore = sys.argv[1], sys.argv[2] == "ignore"
    grandchild = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
    open(pidfile, "w").write(str(grandchild.pid))
    if ignore:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
    time.sleep(600)
    """
)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie (exited, not yet reaped by its parent) counts as gone.
    stat = Path(f"/proc/{pid}/stat")
    return stat.exists() and stat.read_text().split()[2] != "Z"


def _supervise(tmp_path: Path, children: dict[str, list[str]]) -> subprocess.Popen:
    import json

    return subprocess.Popen(
        [sys.executable, "-c", RUN_SUPERVISOR, str(tmp_path / "logs"), json.dumps(children)],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def test_crashed_child_is_restarted_and_a_stop_reaches_every_process(tmp_path):
    marker = str(tmp_path / "crashed")
    pids = {name: tmp_path / f"{name}.pid" for name in ("polite", "stubborn")}
    sup = _supervise(
        tmp_path,
        {
            "flaky": [sys.executable, "-c", CRASH_ONCE, marker],
            "polite": [sys.executable, "-c", STUBBORN, str(pids["polite"]), "obey"],
            "stubborn": [sys.executable, "-c", STUBBORN, str(pids["stubborn"]), "ignore"],
        },
    )
    try:
        starts = Path(marker + ".starts")
        wait_until(
            lambda: starts.exists() and len(starts.read_text().split()) == 2, "a restart", 60
        )
        wait_until(lambda: all(p.exists() and p.read_text() for p in pids.values()), "children", 60)
        flaky_pid = int(starts.read_text().split()[-1])
        grandchildren = [int(p.read_text()) for p in pids.values()]
        assert _alive(flaky_pid) and all(_alive(g) for g in grandchildren)
        sup.send_signal(signal.SIGTERM)  # what Ctrl-C on `clara up` does
        out, _ = sup.communicate(timeout=60)
    finally:
        if sup.poll() is None:
            sup.kill()
    assert sup.returncode == 0, out
    assert "flaky exited with code 7; restarting" in out
    assert "stopped" in out
    time.sleep(0.5)
    assert not _alive(flaky_pid)
    assert not any(_alive(g) for g in grandchildren)  # the SIGTERM-ignoring one was killed


def test_a_child_that_keeps_crashing_stops_everything(tmp_path):
    sup = _supervise(
        tmp_path,
        {
            "broken": [sys.executable, "-c", "import sys; sys.exit(3)"],
            "healthy": [sys.executable, "-c", "import time; time.sleep(600)"],
        },
    )
    out, _ = sup.communicate(timeout=120)
    assert sup.returncode == 1, out
    assert "broken keeps exiting (last code 3); stopping everything" in out
    assert (tmp_path / "logs" / "broken.log").exists()
