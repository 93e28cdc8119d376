"""Engine events: what a game engine tells the runtime about its rendering, with timestamps."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from lego_embed.errors import InvalidEngineEventError

FRAME_BEGIN = "frame_begin"
PASS_BEGIN = "pass_begin"
PASS_END = "pass_end"
FRAME_END = "frame_end"
EVENT_KINDS = (FRAME_BEGIN, PASS_BEGIN, PASS_END, FRAME_END)
# Events measured on the GPU (lego_embed.engines.gpu_timestamps): frames named GPU_EVENT_NAME,
# passes named GPU_PASS_PREFIX + pass. They arrive a frame or more after they happened.
GPU_EVENT_NAME = "gpu"
GPU_PASS_PREFIX = "gpu:"


@dataclass(frozen=True)
class EngineEvent:
    """One rendering event reported by the engine.

    `kind` is one of frame_begin, pass_begin, pass_end, frame_end; `name` names the pass (empty
    for frame events); `t_ns` is a `time.monotonic_ns()` timestamp taken when the event happened
    (the engine's clock, which may be another process's: CLOCK_MONOTONIC is system-wide).
    """

    kind: str
    name: str
    t_ns: int

    def __post_init__(self) -> None:
        if self.kind not in EVENT_KINDS:
            raise InvalidEngineEventError(
                f"event kind {self.kind!r} is not one of {', '.join(EVENT_KINDS)}"
            )
        if not isinstance(self.t_ns, int) or isinstance(self.t_ns, bool) or self.t_ns < 0:
            raise InvalidEngineEventError(
                f"event t_ns {self.t_ns!r} must be a non-negative int from time.monotonic_ns()"
            )


def measured_on_gpu(event: EngineEvent) -> bool:
    """Whether the event comes from GPU timestamps (late, on the GPU's timeline) rather than
    from the engine's CPU callbacks (live)."""
    return event.name == GPU_EVENT_NAME or event.name.startswith(GPU_PASS_PREFIX)


class EngineEventSource(Protocol):
    """An engine's events delivered through shared memory and a file descriptor rather than by
    `Runtime.on_event` calls (`Runtime.attach_events`): the worker reads them itself, between
    subtasks and when it wakes. `read_events()` returns, without blocking, every event sent
    since the last call, in the order sent (cheap: the worker calls it between every two
    subtasks); `has_unread()` says whether there are any. `wake_fileno()` becomes readable
    when an event that can open a gap was sent (never for a pass_begin: that would take the
    device from the pass it begins) and stays so until `clear_wake()`, or for good once the
    engine's side is gone. The worker calls `clear_wake()` just before it sleeps on the bell
    (only while work waits for a gap), so a source may ring only after that call (the Godot
    bridge does). `closed` is True once the engine's side is gone and everything was
    read (the runtime then detaches the source)."""

    closed: bool

    def read_events(self) -> list[EngineEvent]: ...

    def has_unread(self) -> bool: ...

    def wake_fileno(self) -> int: ...

    def clear_wake(self) -> None: ...
