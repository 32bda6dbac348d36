"""End the process groups we start (`start_new_session`) without ever signalling a stranger's.

A group's id is its leader's pid, and the kernel hands a pid out again once it is free: once the process is
reaped and no process is left in a group or session of that id. On this project's machines `pid_max` is
32768 and a test run allocates 30 to 120 pids a second, so the numbers wrap within minutes; a group signalled
by the number of a leader reaped minutes before may be another worker's tritonserver, which then stops
answering mid-run. So a leader is reaped here only after its group is ended: while it is unreaped (a zombie
once it exits) its number is held, and `killpg` on it reaches our group and nobody else's.
"""

import contextlib
import logging
import os
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

Process = subprocess.Popen[Any]
POLL_S = 0.02


def live_processes(proc: Path = Path("/proc")) -> dict[int, tuple[int, int]]:
    """Live (non-zombie) processes: pid -> (parent pid, process group), read from /proc."""
    table = {}
    for stat in proc.glob("[0-9]*/stat"):
        try:
            # After the parenthesised command (it may hold spaces and parentheses): state, ppid, pgrp, ...
            state, parent, group = stat.read_text().rpartition(")")[2].split()[:3]
        except (OSError, ValueError):  # it ended meanwhile, or no stat to read
            continue
        if state != "Z":
            table[int(stat.parent.name)] = (int(parent), int(group))
    return table


def group_members(pgid: int) -> list[int]:
    """Live (non-zombie) processes in a process group, read from /proc."""
    return [pid for pid, (_, group) in live_processes().items() if group == pgid]


def exit_status(process: Process, timeout_s: float | None = 0.0) -> int | None:
    """`process`'s exit status once it has ended (negative: the signal that ended it, as Popen says), or
    None while it still runs after `timeout_s` (None: wait for ever). It is not reaped (Popen's `poll` and
    `wait` reap), so its pid, and the id of the group it leads, stay ours."""
    deadline = None if timeout_s is None else time.monotonic() + timeout_s
    while process.returncode is None:
        try:
            ended = os.waitid(os.P_PID, process.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT)
        except ChildProcessError:  # reaped by someone else than `process`: Popen then says 0
            return process.poll()
        if ended is not None:
            code = ended.si_status
            return code if ended.si_code == os.CLD_EXITED else -code
        if deadline is not None and time.monotonic() >= deadline:
            return None
        time.sleep(POLL_S)
    return process.returncode


def signal_leader(process: Process, signum: int) -> None:
    """Send `signum` to the group's leader alone, if it is not reaped (Popen's `send_signal` reaps first)."""
    if process.returncode is None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(process.pid, signum)


def signal_group(process: Process, signum: int) -> None:
    """Send `signum` to the whole group `process` leads (SIGSTOP, SIGCONT, SIGKILL): only while the leader is
    unreaped, since only then is the group's id sure to be ours."""
    if process.returncode is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signum)
    else:
        logger.warning("group %d not signalled: its leader was reaped, the id may be another's", process.pid)


def end_group(process: Process, timeout_s: float) -> list[int]:
    """SIGTERM, then SIGKILL, the group `process` leads until no live member is left, then reap the leader;
    returns the members that outlived SIGKILL (none, as a rule). A leader reaped before (a caller's `poll` or
    `wait`) leaves its group unsignalled: its id may be another's by now."""
    pgid = process.pid
    if process.returncode is not None:
        left = group_members(pgid)
        if left:
            logger.warning("group %d left alone: its leader was reaped first, the id may be another's", pgid)
        return left
    # Zombies are ignored: they are dead already and only their parent (or init) can reap them.
    for sig in (signal.SIGTERM, signal.SIGKILL):
        if not group_members(pgid):
            break
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pgid, sig)
        deadline = time.monotonic() + timeout_s
        while group_members(pgid) and time.monotonic() < deadline:
            time.sleep(0.05)
    survivors = group_members(pgid)
    if survivors:
        logger.error("processes %s of group %d survived SIGKILL", survivors, pgid)
    process.wait()
    return survivors


def stop_group(
    process: Process, *, name: str, grace_s: float, kill_after_s: float, signum: int = signal.SIGTERM
) -> list[int]:
    """Ask the leader to stop (`signum`), give it `grace_s` to exit (it may stop its children itself), then
    end what is left of the group and reap the leader; returns the members that outlived SIGKILL."""
    signal_leader(process, signum)
    if exit_status(process, grace_s) is None:
        logger.warning(
            "%s ignored %s for %.0f s; ending its group", name, signal.Signals(signum).name, grace_s
        )
    return end_group(process, kill_after_s)
