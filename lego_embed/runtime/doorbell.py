"""The worker's doorbell: a self-pipe any thread rings, waited on together with engine fds."""

from __future__ import annotations

import contextlib
import os
import select
import weakref
from collections.abc import Sequence


class Doorbell:
    """Wakes the runtime's worker. `ring()` writes one byte to a non-blocking pipe (safe from
    any thread, and from C code holding no Python lock); `wait(timeout_s, fds)` sleeps until it
    was rung or one of the engine's file descriptors is readable (to the millisecond: `poll`),
    so an engine that writes its events to shared memory and rings a bell pipe of its own
    (`events.EngineEventSource`) wakes the worker itself, one OS wake-up instead of a game
    thread's wake-up plus the worker's. `clear()` forgets past rings."""

    def __init__(self) -> None:
        self._read_fd, self._write_fd = os.pipe()
        os.set_blocking(self._read_fd, False)
        os.set_blocking(self._write_fd, False)
        self._closer = weakref.finalize(self, _close_fds, self._read_fd, self._write_fd)

    def ring(self) -> None:
        with contextlib.suppress(BlockingIOError):  # a full pipe: it is rung already
            os.write(self._write_fd, b"\x01")

    def clear(self) -> None:
        drain(self._read_fd)

    def wait(self, timeout_s: float, fds: Sequence[int] = ()) -> None:
        waiting = select.poll()  # poll: no limit on descriptor numbers, unlike select
        for fd in (self._read_fd, *fds):
            waiting.register(fd, select.POLLIN)
        waiting.poll(max(timeout_s, 0.0) * 1000.0)


def drain(fd: int) -> bool:
    """Reads a non-blocking pipe empty; True when its writing end is closed (end of file)."""
    try:
        while os.read(fd, 4096):
            pass
    except BlockingIOError:
        return False
    return True


def _close_fds(*fds: int) -> None:
    for fd in fds:
        os.close(fd)
