"""Where the CPU goes: CPU seconds of process trees, and py-spy sampling profiles summarised by function.

CPU per delivered token is the figure that survives a noisy shared machine: wall-clock latency moves with
whatever else runs, the CPU a process spends per token does not (much).
"""

from __future__ import annotations

import collections
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import psutil


def cpu_seconds(pid: int) -> float:
    """User + system CPU of ``pid`` and every process under it (0 when it is gone)."""
    try:
        root = psutil.Process(pid)
        total = 0.0
        for process in [root, *root.children(recursive=True)]:
            try:
                times = process.cpu_times()
                total += times.user + times.system
            except psutil.NoSuchProcess:
                continue
        return total
    except psutil.NoSuchProcess:
        return 0.0


def machine_yardstick_ms() -> float:
    """CPU milliseconds this machine takes for a fixed pure-Python loop (the best of three): reports from different
    machines, or from one machine on different days (a shared host's speed moves), compare only through it."""
    best = float("inf")
    for _ in range(3):
        started = time.process_time()
        total = 0
        for n in range(2_000_000):
            total += n
        best = min(best, time.process_time() - started)
    return round(best * 1000, 1)


def command_stats(client: Any) -> dict[str, tuple[int, int]]:
    """Calls and microseconds of each Redis command since the server started (``INFO commandstats``)."""
    stats: dict[str, Any] = client.info("commandstats")
    return {name.removeprefix("cmdstat_"): (int(v["calls"]), int(v["usec"])) for name, v in stats.items()}


def python_pid(root_pid: int, marker: str) -> int:
    """The deepest process under ``root_pid`` (a ``sh -c`` running a Procfile line) whose command has ``marker``.

    For gunicorn that is the worker, not the master; for Celery and the consumer, the program the shell ran.
    """
    try:
        tree = [psutil.Process(root_pid), *psutil.Process(root_pid).children(recursive=True)]
    except psutil.NoSuchProcess:
        return root_pid
    matches = [p for p in tree if marker in " ".join(p.cmdline())]
    return matches[-1].pid if matches else root_pid


def py_spy() -> str | None:
    """The py-spy executable next to this interpreter, or on PATH."""
    local = Path(sys.executable).parent / "py-spy"
    return str(local) if local.exists() else shutil.which("py-spy")


def start_profiles(
    pids: dict[str, int], directory: Path, *, duration_s: float, rate_hz: int = 200
) -> list[subprocess.Popen[bytes]]:
    """Start one py-spy per process (raw collapsed stacks into ``directory/<name>.txt``); returns them to wait on."""
    executable = py_spy()
    if executable is None:
        return []
    directory.mkdir(parents=True, exist_ok=True)
    started = []
    for name, pid in pids.items():
        command = [executable, "record", "-p", str(pid), "-d", str(int(duration_s)), "-r", str(rate_hz)]
        command += ["-f", "raw", "-o", str(directory / f"{name}.txt"), "--nonblocking"]
        started.append(subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
    return started


def summarise(path: Path, *, top: int = 12) -> list[tuple[str, float, float]]:
    """(function, self share, inclusive share) of the most sampled functions of one raw py-spy profile.

    py-spy leaves idle samples out (a thread blocked in a system call), so the shares are of busy time.
    """
    if not path.exists():
        return []
    own: collections.Counter[str] = collections.Counter()
    inclusive: collections.Counter[str] = collections.Counter()
    total = 0
    for line in path.read_text().splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        total += count
        frames = [_short(frame) for frame in stack.split(";")]
        own[frames[-1]] += count
        for frame in set(frames):
            inclusive[frame] += count
    if not total:
        return []
    return [(frame, count / total, inclusive[frame] / total) for frame, count in own.most_common(top)]


# Leaf frames of a thread that waits (py-spy counts some waits as busy: a condition's lock, epoll in kombu).
_WAITING = ("Condition.wait", "Event.wait", "_epoll.poll", "poll (", "select (")


def share(path: Path, markers: tuple[str, ...]) -> float | None:
    """The fraction of one raw profile's busy samples spent under a frame naming any of ``markers``.

    Samples whose innermost frame is a wait are left out of the numerator: they are not CPU.
    """
    if not path.exists():
        return None
    total = matched = 0
    for line in path.read_text().splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        total += count
        frames = stack.split(";")
        if any(marker in frame for frame in frames for marker in markers) and not frames[-1].startswith(_WAITING):
            matched += count
    return matched / total if total else None


def _short(frame: str) -> str:
    # "send (gevent/_socketcommon.py:722)" -> "send (gevent/_socketcommon.py)": lines differ between samples.
    name, _, where = frame.partition(" (")
    where = where.rstrip(")").rsplit(":", 1)[0]
    for marker in ("site-packages/", "/lib/python3"):
        if marker in where:
            where = where.split(marker, 1)[1]
    return f"{name} ({where})" if where else name


def profile_table(directory: Path, names: list[str]) -> str:
    """A markdown section per process: its most sampled functions by self time."""
    sections = []
    for name in names:
        rows = summarise(directory / f"{name}.txt")
        if not rows:
            continue
        lines = [f"**{name}**", "", "| function (self) | self % | inclusive % |", "| --- | --- | --- |"]
        lines += [f"| `{frame}` | {own * 100:.1f} | {incl * 100:.1f} |" for frame, own, incl in rows]
        sections.append("\n".join(lines))
    return "\n\n".join(sections)
