"""CPU time and resident memory of a process, and the machine's busy CPU time,
read straight from ``/proc`` (Linux).

Used by the gateway benchmark to measure the gateway process from outside it:
``/proc/<pid>/stat`` counts every thread of the process (utime + stime, in clock
ticks, usually 10 ms) and gives its RSS in pages; ``/proc/stat``'s first line is
the whole machine. The parsers are pure; :func:`read_process` and
:func:`read_machine` do the reading.
"""

from __future__ import annotations

import os
import platform
from dataclasses import dataclass
from pathlib import Path

#: Clock ticks per second of the CPU times in /proc, and the page size of its RSS.
CLOCK_TICKS_PER_S = os.sysconf("SC_CLK_TCK")
PAGE_BYTES = os.sysconf("SC_PAGE_SIZE")

#: 0-based positions in /proc/<pid>/stat of the fields after ``(comm)`` (field 3, state, is 0).
_UTIME, _STIME, _RSS = 11, 12, 21


@dataclass(frozen=True, slots=True)
class ProcessSample:
    cpu_s: float
    rss_bytes: int


@dataclass(frozen=True, slots=True)
class MachineSample:
    """CPU seconds of all cores together since boot: busy (not idle, not waiting on I/O) and total."""

    busy_s: float
    total_s: float


def parse_process_stat(text: str, ticks_per_s: int = CLOCK_TICKS_PER_S, page_bytes: int = PAGE_BYTES
                       ) -> ProcessSample:
    """One ``/proc/<pid>/stat`` line. The command name (field 2) is in parentheses and may
    itself hold spaces and parentheses, so the fields are counted from its last ``)``."""
    close = text.rfind(")")
    if close < 0:
        raise ValueError("not a /proc/<pid>/stat line: no ')' after the command name")
    fields = text[close + 1:].split()
    if len(fields) <= _RSS:
        raise ValueError(f"not a /proc/<pid>/stat line: {len(fields)} fields after the command name")
    ticks = int(fields[_UTIME]) + int(fields[_STIME])
    return ProcessSample(cpu_s=ticks / ticks_per_s, rss_bytes=int(fields[_RSS]) * page_bytes)


def parse_machine_stat(text: str, ticks_per_s: int = CLOCK_TICKS_PER_S) -> MachineSample:
    """The aggregate ``cpu`` line of ``/proc/stat``: user nice system idle iowait irq softirq steal ..."""
    for line in text.splitlines():
        parts = line.split()
        if parts and parts[0] == "cpu":
            # guest and guest_nice (fields 9, 10) are already counted in user and nice.
            values = [int(v) for v in parts[1:9]]
            idle = values[3] + (values[4] if len(values) > 4 else 0)
            total = sum(values)
            return MachineSample(busy_s=(total - idle) / ticks_per_s, total_s=total / ticks_per_s)
    raise ValueError("no aggregate 'cpu' line in /proc/stat")


def read_process(pid: int) -> ProcessSample:
    """Raises OSError (FileNotFoundError) when the process is gone."""
    return parse_process_stat(Path(f"/proc/{pid}/stat").read_text())


def read_machine() -> MachineSample:
    return parse_machine_stat(Path("/proc/stat").read_text())


def cpu_model() -> str:
    """The CPU's model name, for the figures' machine line ("unknown" when nothing says)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"

