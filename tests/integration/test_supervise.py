"""The supervisor that keeps foreign servers from outliving the gateway: real processes.

The "server" here is a Python process that starts a child of its own (as vLLM starts
its engine processes) and prints both pids; the tests kill the supervisor's parent in
every way a gateway can die and check that nothing is left.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

from tests.support.server import pid_alive, wait_until

SERVER = textwrap.dedent(
    """
    import os, signal, subprocess, sys, time
    if sys.argv[1:] == ["stubborn"]:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
    print(os.getpid(), child.pid, flush=True)
    if sys.argv[1:] == ["exit7"]:
        sys.exit(7)
    time.sleep(600)
    """
)
# A stand-in for the gateway: starts the supervisor with a pipe on its stdin (or the
# stdin it is given) and its output in one pipe, as the gateway does (a pipe that
# breaks when the gateway dies), prints the supervisor's pid and the server's line,
# then waits.
GATEWAY = textwrap.dedent(
    """
    import subprocess, sys
    keep_stdin = sys.argv[1] == "inherit"
    proc = subprocess.Popen(
        [sys.executable, "-m", "corral.worker.supervise", "--grace", "2", "--", *sys.argv[2:]],
        stdin=None if keep_stdin else subprocess.PIPE, stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT, start_new_session=True,
    )
    print(proc.pid, proc.stdout.readline().decode().strip(), flush=True)
    proc.wait()
    print("exit", proc.returncode, flush=True)
    """
)


def start(
    tmp_path: Path, *server_args: str, stdin: str = "pipe"
) -> tuple[subprocess.Popen[str], list[int]]:
    script = tmp_path / "server.py"
    script.write_text(SERVER)
    gateway = subprocess.Popen(
        [sys.executable, "-c", GATEWAY, stdin, sys.executable, str(script), *server_args],
        stdin=subprocess.PIPE,  # held open by the test: only the kernel's signal can fire
        stdout=subprocess.PIPE,
        text=True,
        cwd=Path(__file__).resolve().parents[2],
    )
    assert gateway.stdout is not None
    pids = [int(p) for p in gateway.stdout.readline().split()]
    assert len(pids) == 3, pids  # supervisor, server, the server's own child
    return gateway, pids


def test_a_gateway_killed_with_kill_9_leaves_nothing_behind(tmp_path: Path) -> None:
    """The supervisor's stdin is the test's pipe, held open: no EOF comes, so only
    PR_SET_PDEATHSIG can tell it that its parent died."""
    gateway, pids = start(tmp_path, stdin="inherit")
    assert all(pid_alive(p) for p in pids)
    with gateway:
        gateway.kill()
    assert wait_until(lambda: not any(pid_alive(p) for p in pids), 10), pids


def test_a_closed_pipe_stops_the_server_and_its_children(tmp_path: Path) -> None:
    """The gateway's pipe closing (its death seen on any system) stops everything."""
    script = tmp_path / "server.py"
    script.write_text(SERVER)
    proc = subprocess.Popen(
        [sys.executable, "-m", "corral.worker.supervise", "--", sys.executable, str(script)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )
    assert proc.stdout is not None and proc.stdin is not None
    server, child = (int(p) for p in proc.stdout.readline().split())
    proc.stdin.close()
    assert proc.wait(10) == 128 + signal.SIGTERM  # the server died of the SIGTERM
    assert wait_until(lambda: not pid_alive(server) and not pid_alive(child), 5)
    assert proc.stderr is not None
    assert b"the gateway closed its pipe" in proc.stderr.read()
    proc.stdout.close()
    proc.stderr.close()


def test_a_server_that_ignores_sigterm_is_killed_after_the_grace(tmp_path: Path) -> None:
    gateway, (supervisor, server, child) = start(tmp_path, "stubborn")
    started = time.monotonic()
    os.kill(supervisor, signal.SIGTERM)
    assert gateway.stdout is not None
    assert gateway.stdout.readline().split() == ["exit", str(128 + signal.SIGKILL)]
    assert time.monotonic() - started >= 1.5  # --grace 2
    assert wait_until(lambda: not pid_alive(server) and not pid_alive(child), 5)
    with gateway:
        gateway.wait(10)


def test_the_servers_exit_code_is_the_supervisors_and_strays_are_cleaned(
    tmp_path: Path,
) -> None:
    gateway, (_, server, child) = start(tmp_path, "exit7")
    assert gateway.stdout is not None
    assert gateway.stdout.readline().split() == ["exit", "7"]
    assert wait_until(lambda: not pid_alive(server) and not pid_alive(child), 5)
    with gateway:
        gateway.wait(10)


def test_a_command_that_cannot_start_says_so() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "corral.worker.supervise", "--", "/no/such/server"],
        capture_output=True,
        text=True,
        timeout=30,
        start_new_session=True,
    )
    assert proc.returncode == 2
    assert "cannot start '/no/such/server'" in proc.stderr
