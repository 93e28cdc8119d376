"""The Python side of the Godot bridge (addons/lego_embed/native/lego_bridge.c forwards here).

The C bridge embeds CPython in the Godot process and calls the module-level functions below from
the engine's main thread, always holding the GIL only for the duration of the call:

- ``start(config)`` loads the model and starts the Runtime on a background thread and returns at
  once; ``poll()`` later reports ``{"kind": "ready"}`` or ``{"kind": "load_failed"}``.
- ``request(npc_id, state, actions, deadline_ms)`` validates the state synchronously (a malformed
  state raises InvalidGameStateError, which the bridge turns into ``decision_failed``) and queues
  the request; inference runs on the Runtime's worker thread, never on the game thread.
- ``poll()`` returns the finished decisions and status reports as plain dicts (Godot
  Dictionaries on the other side). The C side calls it only after ``notify_results``.
- Engine events never enter Python on the game thread: the C side stamps and rings them, and the
  pump thread here drains the ring (``_lego_bridge.wait_events``) into ``Runtime.on_event``.
"""

from __future__ import annotations

import collections
import dataclasses
import sys
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lego_embed.errors import EngineBridgeError
from lego_embed.runtime.events import EVENT_KINDS, EngineEvent

EVENT_WAIT_S = 0.05
STOP_JOIN_S = 5.0


@dataclass(frozen=True)
class BridgeConfig:
    """What the Godot project settings ask for.

    model: "bundled" or a model folder. device: torch device ("cpu", "cuda").
    torch_threads: intra-op threads for the LLM (1 leaves the other cores to the game).
    switch_interval_ms: Python's GIL switch interval, the longest the game thread can wait for
    the GIL when it calls in while a Python thread runs (Python's default is 5 ms).
    runtime_options: keyword arguments for the Runtime's RuntimeConfig.
    """

    model: str = "bundled"
    device: str = "cpu"
    torch_threads: int = 1
    switch_interval_ms: float = 0.5
    runtime_options: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_mapping(cls, config: Mapping[str, Any]) -> BridgeConfig:
        """Read the keys this class knows from the dict LegoRuntime sends (others are the C
        side's: python_executable, sys_path)."""
        known = {f.name for f in dataclasses.fields(cls)}
        values = {key: config[key] for key in known if key in config}
        result = cls(**values)
        if not isinstance(result.model, str) or not result.model:
            raise EngineBridgeError("lego_embed/model/path must be a non-empty string ('bundled')")
        if not isinstance(result.torch_threads, int) or result.torch_threads < 1:
            raise EngineBridgeError("lego_embed/runtime/torch_threads must be an int >= 1")
        if not isinstance(result.runtime_options, dict):
            raise EngineBridgeError("lego_embed/runtime/options must be a Dictionary")
        return result


def decision_to_dict(decision: Any) -> dict[str, Any]:
    """A Runtime Decision as the Dictionary LegoRuntime dispatches (kind "decision")."""
    return {"kind": "decision", **dataclasses.asdict(decision)}


def event_from_godot(kind: str, name: str, t_ns: int) -> EngineEvent:
    """An event from the C ring (CLOCK_MONOTONIC ns, the clock of time.monotonic_ns)."""
    return EngineEvent(kind=kind, name=name, t_ns=int(t_ns))


class GodotSession:
    """One running game: the Runtime, the event pump thread and the queue poll() drains.

    ``notify`` tells the engine side that results are queued (the C side's notify_results);
    ``wait_events(timeout_s)`` returns the engine's events as (kind, name, t_ns) tuples.
    """

    def __init__(
        self,
        config: BridgeConfig,
        notify: Callable[[], None],
        wait_events: Callable[[float], list[tuple[str, str, int]]],
    ) -> None:
        self.config = config
        self._notify = notify
        self._wait_events = wait_events
        self._results: collections.deque[dict[str, Any]] = collections.deque()
        self._runtime: Any = None
        self._load_error: str | None = None
        self._stopping = threading.Event()
        self._event_counts = dict.fromkeys(EVENT_KINDS, 0)
        self._forwarded_counts = dict.fromkeys(EVENT_KINDS, 0)
        self._event_errors = 0
        self._decisions_delivered = 0
        self._started_ns = time.monotonic_ns()
        self._loader = threading.Thread(target=self._load, name="lego-embed-load", daemon=True)
        self._pump = threading.Thread(
            target=self._pump_events, name="lego-embed-events", daemon=True
        )
        self._loader.start()
        self._pump.start()

    def _push(self, result: dict[str, Any]) -> None:
        self._results.append(result)
        self._notify()

    def _load(self) -> None:
        try:
            runtime, info = build_runtime(self.config)
            if self._stopping.is_set():
                runtime.stop()
                return
            self._runtime = runtime
            self._push({"kind": "ready", **info})
        except Exception as exc:  # every failure reaches the game as one clear message
            self._load_error = f"{type(exc).__name__}: {exc}"
            self._push({"kind": "load_failed", "reason": self._load_error})

    def _forward(self, batch: list[tuple[str, str, int]]) -> None:
        runtime = self._runtime
        for kind, name, t_ns in batch:
            try:
                event = event_from_godot(kind, name, t_ns)
                self._event_counts[event.kind] += 1
                if runtime is not None:
                    runtime.on_event(event)
                    self._forwarded_counts[event.kind] += 1
            except Exception as exc:  # a bad event must not stop the pump
                self._event_errors += 1
                self._push({"kind": "error", "reason": f"{type(exc).__name__}: {exc}"})

    def _pump_events(self) -> None:
        while not self._stopping.is_set():
            self._forward(self._wait_events(EVENT_WAIT_S))

    def _on_decision(self, decision: Any) -> None:
        self._decisions_delivered += 1
        self._push(decision_to_dict(decision))

    def request(self, npc_id: str, state: dict, actions: list, deadline_ms: float) -> int:
        """Validate and queue one decision; returns the request id."""
        if self._runtime is None:
            if self._load_error is not None:
                raise EngineBridgeError(f"the NPC model failed to load: {self._load_error}")
            from lego_embed.npc.state import validate_state

            validate_state(state)
            raise EngineBridgeError(
                "the NPC model is still loading; wait for LegoRuntime's runtime_ready signal"
            )
        if not isinstance(actions, list) or not all(isinstance(a, str) for a in actions):
            raise EngineBridgeError(f"allowed actions must be an Array of Strings, got {actions!r}")
        return self._runtime.request(
            str(npc_id), state, actions, float(deadline_ms), callback=self._on_decision
        )

    def poll(self) -> list[dict[str, Any]]:
        """Everything finished since the last poll, oldest first."""
        out = []
        while self._results:
            out.append(self._results.popleft())
        return out

    def stats(self) -> dict[str, Any]:
        """Counters of the bridge (events received from the engine and forwarded to the Runtime,
        by kind; decisions) and the Runtime's stats()."""
        result: dict[str, Any] = {
            "events": dict(self._event_counts),
            "events_forwarded": dict(self._forwarded_counts),
            "event_errors": self._event_errors,
            "decisions_delivered": self._decisions_delivered,
            "model_ready": self._runtime is not None,
            "uptime_s": (time.monotonic_ns() - self._started_ns) / 1e9,
        }
        if self._runtime is not None:
            result["runtime"] = self._runtime.stats()
        return result

    def stop(self) -> dict[str, Any]:
        """Stop the pump (after it forwarded every event the engine sent) and the Runtime;
        waits at most a few seconds for each thread. Returns the final stats()."""
        self._stopping.set()
        self._pump.join(STOP_JOIN_S)
        self._forward(self._wait_events(0.0))
        final = self.stats()
        if self._runtime is not None:
            self._runtime.stop()
        return final


def build_runtime(config: BridgeConfig) -> tuple[Any, dict[str, Any]]:
    """Load the model (and its skip bundle when the folder has one) and start a Runtime.

    Returns the started Runtime and a description for the ``ready`` report.
    """
    import torch

    from lego_embed.model.loading import load_model
    from lego_embed.runtime.runtime import Runtime, RuntimeConfig

    torch.set_num_threads(config.torch_threads)
    loaded = load_model(config.model, device=config.device)
    bundle = None
    bundle_dir = Path(loaded.path) / "skip_bundle"
    if bundle_dir.is_dir():
        from lego_embed.skip import SkipBundle

        bundle = SkipBundle.load(bundle_dir)
    runtime = Runtime(loaded, bundle=bundle, config=RuntimeConfig(**config.runtime_options))
    runtime.start()
    info = {
        "model": str(loaded.path),
        "family": loaded.family,
        "num_layers": loaded.num_layers,
        "device": str(loaded.device),
        "skip_levels": 0 if bundle is None else len(bundle.levels),
    }
    return runtime, info


_session: GodotSession | None = None


def _session_or_raise() -> GodotSession:
    if _session is None:
        raise EngineBridgeError("the Godot bridge is not started; LegoRuntime calls start() first")
    return _session


def start(config: dict) -> dict:
    """Start (or restart) the session for this game; returns {"ok": True} at once."""
    global _session
    import _lego_bridge  # the C bridge's built-in module; exists only inside Godot

    bridge_config = BridgeConfig.from_mapping(config)
    sys.setswitchinterval(bridge_config.switch_interval_ms / 1000.0)
    if _session is not None:
        _session.stop()
    _session = GodotSession(bridge_config, _lego_bridge.notify_results, _lego_bridge.wait_events)
    return {"ok": True, "python": sys.version.split()[0], "prefix": sys.prefix}


def request(npc_id: str, state: dict, actions: list, deadline_ms: float) -> dict:
    """Queue one decision: {"request_id": n}; bad input raises (the bridge reports it)."""
    return {"request_id": _session_or_raise().request(npc_id, state, actions, deadline_ms)}


def poll() -> list[dict[str, Any]]:
    """Finished decisions and status reports since the last poll."""
    return _session_or_raise().poll()


def stats() -> dict[str, Any]:
    """The session's counters, plus the C ring's pushed/dropped event counts."""
    import _lego_bridge

    result = _session_or_raise().stats()
    result["ring"] = _lego_bridge.event_counts()
    return result


def stop() -> dict[str, Any]:
    """Stop the session's threads (the game is quitting); returns the final stats()."""
    global _session
    if _session is None:
        return {}
    import _lego_bridge

    final = _session.stop()
    final["ring"] = _lego_bridge.event_counts()
    _session = None
    return final
