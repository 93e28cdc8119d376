"""The machine a benchmark runs on: its measured state, and the scheduling priority of the run.

`machine_state` samples what else the machine is doing (load averages, the busiest other
processes by CPU over a short interval), so every benchmark JSON records measured machine state
before and after rather than a claim. `core_priority` raises the benchmark's scheduling group
while it runs (Linux autogroups: `nice` does nothing across shells).
"""

from __future__ import annotations

import os
import platform
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

BUSY_SAMPLE_S = 1.0
BUSY_MIN_CPU_PERCENT = 5.0
BUSY_LISTED = 8


@contextmanager
def core_priority(nice: int | None) -> Iterator[str]:
    """Raises this session's scheduling group over other sessions' (Linux autogroup nice) for the
    duration, so the render process and the LLM worker compete with each other rather than with
    whatever else the machine runs; both stay at the same priority inside the group. Yields what
    was done; restores the previous value on exit."""
    path = Path("/proc/self/autogroup")
    if nice is None:
        yield "autogroup nice unchanged"
        return
    try:
        previous = path.read_text().split("nice")[-1].strip()
        path.write_text(str(nice))
        done = path.read_text().strip()
    except OSError as error:
        yield f"autogroup nice not set ({error})"
        return
    try:
        yield done
    finally:
        path.write_text(previous)


def _cpu_ticks_by_process() -> dict[int, tuple[str, int]]:
    """(command name, user + system clock ticks) of every readable process."""
    ticks = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        name = stat[stat.index("(") + 1 : stat.rindex(")")]
        fields = stat[stat.rindex(")") + 2 :].split()
        ticks[int(entry.name)] = (name, int(fields[11]) + int(fields[12]))
    return ticks


def busy_processes(sample_s: float = BUSY_SAMPLE_S) -> list[dict[str, Any]]:
    """Other processes that used at least BUSY_MIN_CPU_PERCENT of one core over `sample_s`
    seconds (this process excluded), busiest first: pid, name, cpu_percent."""
    hertz = os.sysconf("SC_CLK_TCK")
    first = _cpu_ticks_by_process()
    time.sleep(sample_s)
    second = _cpu_ticks_by_process()
    busy = []
    for pid, (name, ticks) in second.items():
        if pid == os.getpid() or pid not in first:
            continue
        percent = (ticks - first[pid][1]) / hertz / sample_s * 100.0
        if percent >= BUSY_MIN_CPU_PERCENT:
            busy.append({"pid": pid, "name": name, "cpu_percent": round(percent, 1)})
    return sorted(busy, key=lambda p: -p["cpu_percent"])[:BUSY_LISTED]


def machine_state(sample_s: float = BUSY_SAMPLE_S) -> dict[str, Any]:
    """What the machine was doing, measured: the host, core count, load averages (1, 5, 15 min)
    and the busiest other processes over `sample_s` seconds."""
    load1, load5, load15 = os.getloadavg()
    return {
        "host": f"{platform.node()} {platform.machine()}",
        "cpus": os.cpu_count(),
        "loadavg_1_5_15": [round(load1, 2), round(load5, 2), round(load15, 2)],
        "busy_processes": busy_processes(sample_s),
        "time_utc": time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime()),
    }


def machine_summary(before: dict[str, Any], after: dict[str, Any]) -> str:
    """One line for the `machine` field: measured, not assumed."""
    others = max(len(before["busy_processes"]), len(after["busy_processes"]))
    return (
        f"{before['host']}, {before['cpus']} CPUs; load average (1 min) "
        f"{before['loadavg_1_5_15'][0]} before, {after['loadavg_1_5_15'][0]} after; "
        f"{others} other process(es) using >= {BUSY_MIN_CPU_PERCENT:g}% of a core"
    )
