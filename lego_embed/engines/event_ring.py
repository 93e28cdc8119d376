"""Engine events in a shared-memory ring, read by the runtime's worker itself.

The engine side (`EventRingWriter`, in the render process or a render thread) stores each event
in the next slot of a ring in a shared file mapping (payload first, then the slot's sequence
number) and, for an event that can open a gap, writes one byte to a bell pipe. The runtime side
(`EventRingReader`, an `EngineEventSource` for `Runtime.attach_events`) checks for new events
with a memory read, no system call, so the worker can look between every two subtasks; it
sleeps on the bell. A gap-opening event then wakes the worker with one OS wake-up, with no game
thread in between, and a pass_begin wakes nobody.

The writer never blocks: a reader more than `capacity` events behind loses the oldest ones
(counted in `lost`). Each slot is a seqlock: the writer zeroes its number, stores the payload,
then stores the number; the reader accepts a payload only if the slot held the expected number
before and after reading it. On x86-64, whose stores become visible in program order, that is
enough (another architecture would need memory barriers Python does not offer).
"""

from __future__ import annotations

import contextlib
import mmap
import os
import struct
import tempfile
import weakref
from collections.abc import Sequence
from multiprocessing.connection import Connection
from pathlib import Path

from lego_embed.runtime.doorbell import drain
from lego_embed.runtime.events import EVENT_KINDS, PASS_BEGIN, EngineEvent

_HEADER = struct.Struct("<qq")  # events written, writer closed (1)
_PAYLOAD = struct.Struct("<qBB6x")  # t_ns, kind index, name index
_SEQ = struct.Struct("<q")  # the slot's event number + 1 (0: never written)
_SLOT = _PAYLOAD.size + _SEQ.size
DEFAULT_CAPACITY = 8192  # events: about 13 s of a 60 FPS game with 4 passes a frame


def create_ring_file(capacity: int = DEFAULT_CAPACITY) -> Path:
    """A zeroed ring file for `capacity` events, in /dev/shm when there is one (memory only).
    The reader made from it removes it when it is collected."""
    directory = "/dev/shm" if os.path.isdir("/dev/shm") else None
    fd, path = tempfile.mkstemp(prefix="lego-embed-events-", dir=directory)
    try:
        os.ftruncate(fd, _HEADER.size + capacity * _SLOT)
    finally:
        os.close(fd)
    return Path(path)


def _map(path: Path) -> mmap.mmap:
    with open(path, "r+b") as file:
        return mmap.mmap(file.fileno(), 0)


class _RingEnd:
    """What both ends hold: the ring's mapping, its capacity (events) and their end of the
    bell pipe (a multiprocessing Connection used as a raw, non-blocking file descriptor)."""

    def __init__(self, path: Path, bell: Connection) -> None:
        self._ring = _map(path)
        self._capacity = (len(self._ring) - _HEADER.size) // _SLOT
        self._bell = bell
        self._bell_fd = bell.fileno()
        os.set_blocking(self._bell_fd, False)


class EventRingWriter(_RingEnd):
    """Stores engine events in a ring file (`create_ring_file`) and rings the bell (the write
    end of a pipe, a multiprocessing Connection used as a raw file descriptor) for every event
    but a pass_begin, or for every event with `bell_every_event` (a reader that wants them all
    promptly). `names` lists every pass name the engine will use; an event named otherwise
    raises ValueError. `close()` tells the reader that no more events will come."""

    def __init__(self, path: Path, bell: Connection, names: Sequence[str],
                 bell_every_event: bool = False) -> None:
        super().__init__(path, bell)
        self._names = {name: index for index, name in enumerate(("", *names))}
        self._quiet_kind = None if bell_every_event else PASS_BEGIN
        self._written = 0

    def send(self, kind: str, name: str, t_ns: int) -> None:
        try:
            kind_index, name_index = EVENT_KINDS.index(kind), self._names[name]
        except (KeyError, ValueError) as error:
            raise ValueError(f"event ({kind!r}, {name!r}) is not in this ring's tables") from error
        offset = _HEADER.size + (self._written % self._capacity) * _SLOT
        _SEQ.pack_into(self._ring, offset + _PAYLOAD.size, 0)  # being rewritten
        _PAYLOAD.pack_into(self._ring, offset, t_ns, kind_index, name_index)
        self._written += 1
        _SEQ.pack_into(self._ring, offset + _PAYLOAD.size, self._written)
        _HEADER.pack_into(self._ring, 0, self._written, 0)
        if kind != self._quiet_kind:
            with contextlib.suppress(BlockingIOError):  # rung already and not heard yet
                os.write(self._bell_fd, b"\x01")

    def close(self) -> None:
        _HEADER.pack_into(self._ring, 0, self._written, 1)
        self._ring.close()
        self._bell.close()


class EventRingReader(_RingEnd):
    """The runtime's end of an event ring (an `EngineEventSource`): `read_events()` returns the
    events written since the last call, in order, from memory alone; `wake_fileno()` is the
    bell, `clear_wake()` empties it (call it, then `has_unread()`, before sleeping on it).
    `closed` turns True once the writer closed and every event was read (or the bell's writer
    is gone). `lost` counts events overwritten before they were read. Removes the ring file
    when collected, if `remove_file()` did not already."""

    def __init__(self, path: Path, bell: Connection, names: Sequence[str]) -> None:
        super().__init__(path, bell)
        self._names = ("", *names)
        self._next = 0  # events read so far: the next one's number is this + 1
        self._writer_gone = False  # its bell pipe reached end of file
        self.lost = 0
        self.closed = False
        self._path = path
        self._cleanup = weakref.finalize(self, _remove, path, self._ring)

    def _slot_offset(self) -> int:
        return _HEADER.size + (self._next % self._capacity) * _SLOT

    def has_unread(self) -> bool:
        offset = self._slot_offset()
        return _SEQ.unpack_from(self._ring, offset + _PAYLOAD.size)[0] > self._next

    def read_events(self) -> list[EngineEvent]:
        events = []
        ring, capacity, names = self._ring, self._capacity, self._names
        while not self.closed:
            expected = self._next + 1
            offset = self._slot_offset()
            number_at = offset + _PAYLOAD.size
            if _SEQ.unpack_from(ring, number_at)[0] == expected:
                t_ns, kind, name = _PAYLOAD.unpack_from(ring, offset)
                if _SEQ.unpack_from(ring, number_at)[0] == expected:  # not rewritten meanwhile
                    self._next = expected
                    events.append(EngineEvent(EVENT_KINDS[kind], names[name], t_ns))
                continue
            written, writer_closed = _HEADER.unpack_from(ring, 0)
            if written >= expected + capacity:  # lapped: skip to the oldest event still there
                self.lost += written - capacity - self._next
                self._next = written - capacity
            elif written < expected:  # nothing new
                self.closed = bool(writer_closed) or self._writer_gone
                break
            elif self._writer_gone:  # its writer died while rewriting the slot
                self.lost += 1
                self._next = expected
            else:  # being written right now: the next read (or the bell) gets it
                break
        return events

    def remove_file(self) -> None:
        """Removes the ring's file once the writer has mapped it too (the mappings stay), so
        nothing is left in /dev/shm however the processes end."""
        with contextlib.suppress(FileNotFoundError):
            self._path.unlink()

    def wake_fileno(self) -> int:
        return self._bell_fd

    def clear_wake(self) -> None:
        if drain(self._bell_fd):  # end of file: read_events ends with what it left
            self._writer_gone = True


def _remove(path: Path, ring: mmap.mmap) -> None:
    ring.close()
    with contextlib.suppress(FileNotFoundError):
        path.unlink()
