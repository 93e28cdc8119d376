"""Measuring how long one subtask takes: CUDA events on a low-priority stream, or the CPU clock.

`SubtaskTimer` measures; anything with the same `run(work, subtask)` (`DeviceTimer`) can stand
in for it, as the co-location benchmark's simulated device does (`bench.simulated`: it runs the
work and charges the subtask a modelled duration on a simulated clock).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Protocol

import torch

from lego_embed.model.subtask import Subtask


class DeviceTimer(Protocol):
    """Runs one subtask's work and returns how long the subtask took (ns)."""

    def run(self, work: Callable[[], None], subtask: Subtask) -> int: ...


class SubtaskTimer:
    """Runs a callable and returns its duration in nanoseconds.

    On CUDA the work is issued on a dedicated stream with the lowest priority the device allows
    (other CUDA work of this process goes first at kernel boundaries; a renderer in another
    context is not affected by it, see ARCHITECTURE.md) and timed with CUDA events; the call
    waits for the end event, so the duration is GPU time and the outputs are ready on return.
    On CPU the duration is `time.perf_counter_ns` wall time.
    """

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.stream: torch.cuda.Stream | None = None
        if device.type == "cuda":
            lowest_priority = max(torch.cuda.Stream.priority_range())
            self.stream = torch.cuda.Stream(device=device, priority=lowest_priority)

    def run(self, work: Callable[[], None], subtask: Subtask | None = None) -> int:
        """Runs work (the subtask `subtask`, unused here) and returns its duration (ns)."""
        if self.stream is None:
            start_ns = time.perf_counter_ns()
            work()
            return time.perf_counter_ns() - start_ns
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        self.stream.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(self.stream):
            start.record(self.stream)
            work()
            end.record(self.stream)
        end.synchronize()
        return round(start.elapsed_time(end) * 1_000_000)
