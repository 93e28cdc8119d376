"""Engine events through a shared-memory ring that the runtime's worker reads itself
(Runtime.attach_events): events arrive whole and in order, only gap-opening events ring the
worker's bell, a reader that fell a lap behind counts what it lost, and a worker woken by the
ring alone (no on_event call, no game thread) runs a request to its answer, and a sleeping worker
is woken by the bell, not by its heartbeat, and reports how late it saw each event."""

from __future__ import annotations

import multiprocessing
import random
import select
import threading
import time
from collections.abc import Sequence
from pathlib import Path

import pytest
from waiting import wait_for

from lego_embed.engines.event_ring import EventRingReader, EventRingWriter, create_ring_file
from lego_embed.model.loading import LoadedModel
from lego_embed.runtime import runtime as runtime_module
from lego_embed.runtime.doorbell import Doorbell
from lego_embed.runtime.events import FRAME_BEGIN, FRAME_END, PASS_BEGIN, PASS_END, EngineEvent
from lego_embed.runtime.headroom import FRAME_START_SLOT, INTER_FRAME_SLOT
from lego_embed.runtime.runtime import DECIDED, Runtime, RuntimeConfig
from lego_embed.tasks.combat.policy import ACTIONS, random_situation
from lego_embed.tasks.combat.request import combat_request

PASSES = ("shadow", "gbuffer")
STAMPED_EARLIER_NS = 50_000_000  # the bell test's events are sent this long after their stamps


def _ring(capacity: int = 64) -> tuple[EventRingWriter, EventRingReader, Path]:
    path = create_ring_file(capacity)
    bell_in, bell_out = multiprocessing.Pipe(duplex=False)
    return EventRingWriter(path, bell_out, PASSES), EventRingReader(path, bell_in, PASSES), path


def _rung(reader: EventRingReader) -> bool:
    return bool(select.select([reader.wake_fileno()], [], [], 0)[0])


def test_events_arrive_in_order_and_only_gap_openers_ring() -> None:
    writer, reader, _ = _ring()
    assert reader.read_events() == [] and not reader.has_unread() and not _rung(reader)
    writer.send(FRAME_BEGIN, "", 10)
    assert _rung(reader) and reader.has_unread()
    assert reader.read_events() == [EngineEvent(FRAME_BEGIN, "", 10)]
    reader.clear_wake()
    assert not _rung(reader)
    writer.send(PASS_BEGIN, "shadow", 11)
    assert not _rung(reader) and reader.has_unread()  # a starting pass wakes no one
    writer.send(PASS_END, "shadow", 12)
    assert _rung(reader)
    writer.send(PASS_BEGIN, "gbuffer", 13)
    writer.send(PASS_END, "gbuffer", 2**62)
    writer.send(FRAME_END, "", 2**62 + 1)
    assert reader.read_events() == [
        EngineEvent(PASS_BEGIN, "shadow", 11), EngineEvent(PASS_END, "shadow", 12),
        EngineEvent(PASS_BEGIN, "gbuffer", 13), EngineEvent(PASS_END, "gbuffer", 2**62),
        EngineEvent(FRAME_END, "", 2**62 + 1),
    ]
    assert not reader.closed and reader.lost == 0
    writer.close()
    assert reader.read_events() == [] and reader.closed


def test_a_reader_a_lap_behind_gets_the_newest_events_and_counts_the_rest() -> None:
    writer, reader, _ = _ring(capacity=8)
    for t_ns in range(25):  # never blocks, however far behind the reader is
        writer.send(PASS_END, "shadow", t_ns)
    assert [e.t_ns for e in reader.read_events()] == list(range(17, 25))
    assert reader.lost == 17
    writer.send(FRAME_END, "", 25)
    assert [e.t_ns for e in reader.read_events()] == [25]


def test_a_writer_that_dies_leaves_its_events_then_a_closed_ring() -> None:
    """A render process killed mid-replay never marks the ring closed; its bell's end of file
    does, once the reader has taken every event it wrote."""
    path = create_ring_file(64)
    bell_in, bell_out = multiprocessing.Pipe(duplex=False)
    writer = EventRingWriter(path, bell_out, PASSES)
    reader = EventRingReader(path, bell_in, PASSES)
    writer.send(FRAME_BEGIN, "", 1)
    writer.send(PASS_END, "shadow", 2)
    bell_out.close()  # the process is gone: its end of the bell closes, nothing else happens
    reader.clear_wake()
    assert not reader.closed
    assert [e.t_ns for e in reader.read_events()] == [1, 2]
    assert reader.closed and reader.read_events() == []


def test_an_event_outside_the_tables_is_refused() -> None:
    writer, reader, _ = _ring()
    with pytest.raises(ValueError, match="not in this ring's tables"):
        writer.send(PASS_END, "lighting", 1)
    assert reader.read_events() == []


def test_the_ring_file_goes_once_mapped_or_with_its_reader() -> None:
    writer, reader, path = _ring()
    reader.remove_file()  # both ends have mapped it: the mappings outlive the file
    assert not path.exists()
    writer.send(FRAME_END, "", 7)
    assert [e.t_ns for e in reader.read_events()] == [7]
    writer.close()
    _, reader, path = _ring()
    assert path.exists()
    del reader
    assert not path.exists()


def test_a_rung_doorbell_or_engine_bell_ends_the_wait() -> None:
    bell = Doorbell()
    started = time.monotonic()
    bell.wait(0.05)  # not rung: the wait lasts its timeout
    assert time.monotonic() - started >= 0.04
    bell.ring()
    bell.ring()  # rings add up to one wake-up
    started = time.monotonic()
    bell.wait(60.0)
    assert time.monotonic() - started < 30.0
    bell.clear()
    writer, reader, _ = _ring()
    writer.send(FRAME_END, "", 5)
    started = time.monotonic()
    bell.wait(60.0, (reader.wake_fileno(),))
    assert time.monotonic() - started < 30.0


def test_a_worker_woken_only_by_the_ring_answers(npc_loaded: LoadedModel) -> None:
    """The engine reports nothing through on_event: the worker learns of every frame from the
    ring, so its gap-respecting policy can only run the request in gaps the ring announced."""
    runtime = Runtime(npc_loaded, config=RuntimeConfig(warmup=False, frame_budget_ms=20.0,
                                                       window_ms=100.0, policy="lego"))
    writer, reader, _ = _ring(capacity=1024)
    runtime.start()
    runtime.attach_events(reader)
    try:
        runtime.submit(combat_request("guard", random_situation(random.Random(3)), ACTIONS,
                                      60_000.0))
        decisions: list = []
        frames = 0
        while not decisions and frames < 3000:  # 6 ms of passes, then the frame's gap
            t_ns = time.monotonic_ns()
            writer.send(FRAME_BEGIN, "", t_ns)
            writer.send(PASS_BEGIN, "shadow", t_ns)
            writer.send(PASS_END, "shadow", t_ns + 3_000_000)
            writer.send(PASS_BEGIN, "gbuffer", t_ns + 3_000_000)
            writer.send(PASS_END, "gbuffer", t_ns + 6_000_000)
            writer.send(FRAME_END, "", t_ns + 6_000_000)
            decisions = wait_for(runtime, 1, timeout_s=0.02)
            frames += 1
        assert [d.status for d in decisions] == [DECIDED]
        stats = runtime.stats()
        assert stats["frames_seen"] >= 1 and stats["subtasks"] > 0
        writer.close()
    finally:
        runtime.stop()


class WatchedDoorbell(Doorbell):
    """The worker's real doorbell, counting the worker's sleeps on it and telling whether it is
    asleep now."""

    def __init__(self) -> None:
        super().__init__()
        self.changed = threading.Condition()
        self.sleeps = 0
        self.asleep = False
        self.fds: tuple[int, ...] = ()  # what else the current or last sleep waits on

    def wait(self, timeout_s: float, fds: Sequence[int] = ()) -> None:
        with self.changed:
            self.sleeps += 1
            self.asleep = True
            self.fds = tuple(fds)
            self.changed.notify_all()
        super().wait(timeout_s, fds)
        with self.changed:
            self.asleep = False

    def wait_for(self, condition) -> bool:
        """Until condition() holds (checked at every change), for at most a minute."""
        with self.changed:
            return self.changed.wait_for(condition, timeout=60.0)


def test_the_bell_wakes_a_worker_waiting_for_gaps(npc_loaded: LoadedModel,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """An idle worker sleeps on its doorbell alone: the engine's events wait in the ring, and
    no event costs the engine a wake-up. A request makes it wait for gaps on the ring's bell
    too. With the heartbeat and the engine-silence check pushed to an hour and events stamped
    50 ms before they are sent (so every gap is over when it is read and the request never
    runs), only the bell can wake it. Each event is written while the worker sleeps, and the
    worker must wake, read it and sleep again: a frame_begin starts a frame (and its
    frame_start gap), a pass_end opens that pass's gap, a frame_end the inter-frame gap. Each
    of those is a wake-up whose lag (stamp to reading) stats() reports; a pass_begin is not.
    A bell that does not ring leaves the worker asleep with the event unread, and the sleep
    after reading it never comes (the wait for it gives up after a minute)."""
    monkeypatch.setattr(runtime_module, "MAX_WAIT_NS", 3600 * 10**9)
    monkeypatch.setattr(runtime_module, "SILENCE_CHECK_SLACK_NS", 3600 * 10**9)
    monkeypatch.setattr(runtime_module, "Doorbell", WatchedDoorbell)
    runtime = Runtime(npc_loaded, config=RuntimeConfig(warmup=False, policy="lego"))
    doorbell = runtime._wake
    writer, reader, _ = _ring()
    runtime.start()

    def asleep_having_read(sleeps: int) -> bool:
        return doorbell.sleeps > sleeps and doorbell.asleep and not reader.has_unread()

    assert doorbell.wait_for(lambda: doorbell.asleep)
    sleeps = doorbell.sleeps
    runtime.attach_events(reader)  # rings the doorbell: the worker turns once
    assert doorbell.wait_for(lambda: asleep_having_read(sleeps))

    def write_while_asleep(*events: tuple[str, str, int]) -> None:
        """Each batch ends with an event that rings the bell, so the worker cannot sleep
        again with part of it unread."""
        assert doorbell.wait_for(lambda: doorbell.asleep)
        sleeps = doorbell.sleeps
        for kind, name, t_ns in events:
            writer.send(kind, name, t_ns)
        assert doorbell.wait_for(lambda: asleep_having_read(sleeps))

    def gap_slot() -> str | None:
        gap = runtime.tracker.open_gap()
        return None if gap is None else gap.slot

    try:
        assert doorbell.fds == ()  # idle: the ring's bell is not listened to
        t_ns = time.monotonic_ns() - STAMPED_EARLIER_NS
        writer.send(FRAME_BEGIN, "", t_ns)
        writer.send(PASS_BEGIN, "shadow", t_ns)
        sleeps = doorbell.sleeps
        runtime.submit(combat_request("guard", random_situation(random.Random(5)), ACTIONS,
                                      60_000.0))
        assert doorbell.wait_for(lambda: asleep_having_read(sleeps))
        assert doorbell.fds == (reader.wake_fileno(),)  # a request waits: the bell is
        assert runtime.stats()["frames_seen"] == 1
        for frame in range(2, 5):
            t_ns = time.monotonic_ns() - STAMPED_EARLIER_NS
            write_while_asleep((FRAME_BEGIN, "", t_ns))
            assert runtime.stats()["frames_seen"] == frame and gap_slot() == FRAME_START_SLOT
            # a pass_begin rings nothing: it is read with the pass_end that follows it
            write_while_asleep((PASS_BEGIN, "shadow", t_ns), (PASS_END, "shadow", t_ns + 1_000_000))
            assert gap_slot() == "after:shadow"
            write_while_asleep((FRAME_END, "", t_ns + 2_000_000))
            assert gap_slot() == INTER_FRAME_SLOT
        stats = runtime.stats()
        assert stats["subtasks"] == 0 and stats["queue_length"] == 1
        # every gap-opening event the bell announced was read by a worker just woken, and
        # stamped earlier than sent; the first frame's, read when the request came, was not
        lags = stats["wake_lag_us"]
        assert lags["n"] == 9
        assert lags["p50"] >= (STAMPED_EARLIER_NS - 2_000_000) / 1e3
        writer.close()
    finally:
        runtime.stop()


def test_a_worker_holding_events_it_has_not_applied_does_not_sleep(
        npc_loaded: LoadedModel, monkeypatch: pytest.MonkeyPatch) -> None:
    """Between subtasks the worker reads the ring into its queue; a gap-opening event read
    there and not applied yet has rung the bell already, so the worker must turn again rather
    than sleep (it would miss that gap until the next bell)."""
    monkeypatch.setattr(runtime_module, "Doorbell", WatchedDoorbell)
    runtime = Runtime(npc_loaded, config=RuntimeConfig(warmup=False, policy="lego"))
    writer, reader, _ = _ring()
    runtime.start(thread=False)
    runtime.attach_events(reader)  # rings the doorbell: a sleep now would end at once
    try:
        writer.send(PASS_END, "shadow", time.monotonic_ns())
        assert runtime._events_waiting()  # read, as between two subtasks
        runtime._sleep(3600.0)
        assert runtime._wake.sleeps == 0
        runtime.run_until_idle()
        assert runtime.tracker.open_gap() is not None  # applied at the next turn
    finally:
        writer.close()
        runtime.stop()
