"""The Python side of the Godot bridge (addons/lego_embed/native/lego_bridge.c forwards here).

The engine's main thread never runs Python after start(): the C bridge stamps engine events
and serialises decision requests to JSON into queues, and hands the engine the JSON results
that this module queues. The runtime's worker reads the engine events itself
(``BridgeEvents``, attached with ``Runtime.attach_events``): it sleeps on an eventfd the engine
rings for a gap-opening event, so a gap wakes it with one OS wake-up and no Python thread in
between. Here, one pump thread (``GodotSession``):

- sleeps on the C inbox (``_lego_bridge.wait_inbox``, GIL released) until a request or a GPU
  frame is queued, or 50 ms passed; it runs under SCHED_BATCH, so a main thread that wakes it
  keeps its core (the worker does not: ``RuntimeConfig.worker_yields`` stays off, since a
  worker that waits for a free core misses the gaps of a game that keeps every core busy),
- turns each request into a runtime ``Request`` and submits it with ``Runtime.submit``: an NPC
  with a prompt template gets its own prompt (static part + filled template) and output spec;
  one without uses the bundled model's combat task (the state is the fields). A malformed
  request (a missing field, a template error, bad actions or options, any exception) becomes a
  failed decision carrying ``"Type: message"``, which LegoNPC emits as ``decision_failed``,
- queues every streamed action and line token and every answer (``_lego_bridge.push_result``)
  for the engine's next poll(), the answers with their ``status`` (decided, fallback,
  superseded, failed),
- reports the runtime worker's health (``{"kind": "health", "state", "restarts",
  "last_error"}``) whenever it changes, which LegoRuntime emits as ``health_changed``,
- reports every change of the load state (``{"kind": "overloaded", "overloaded", "demand_per_s",
  "sustainable_per_s", "full_model_per_s", "target_per_s", "t_ns"}``), which LegoRuntime emits
  as ``overloaded``,
- (Godot 4) maps the GPU timestamps the engine read back onto the runtime's clock
  (``gpu_timestamps.GpuTimeline``) and forwards them as GPU-measured events.

A request as LegoNPC sends it (the C bridge's ``request(npc_id, spec, actions, deadline_ms[,
options])``; ``spec`` and ``options`` are Dictionaries): ``output`` ("choice", "line",
"choice_then_line" or "check": only check the prompt template), ``fields``, ``static_prompt``,
``prompt_template``, ``persona`` (combat task), ``say_for`` (a combat line for this action),
``max_tokens``, ``stop``, ``pace_tokens_per_s``. A spec without ``output`` is a combat state
(``request_decision``, and what the Godot 4 addon sends). The options (``parse_request_options``)
are ``fallback`` (an allowed action, "" for none) and ``supersede`` (bool).

The model loads on another thread after ``start``; ``{"kind": "ready"}`` or
``{"kind": "load_failed", "reason": ...}`` tells the game how it went. The module-level
functions take and return JSON text, the only currency between C and Python.
"""

from __future__ import annotations

import dataclasses
import json
import sys
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lego_embed.engines.gpu_timestamps import GpuTimeline, GpuTimestampFrame
from lego_embed.errors import EngineBridgeError, SkipBundleError
from lego_embed.runtime.events import EVENT_KINDS, EngineEvent
from lego_embed.runtime.request import DEFAULT_PACE_TOKENS_PER_S
from lego_embed.runtime.thread_priority import yield_to_engine_threads

ENGINE_WAIT_S = 0.05
IDLE_CHECK_FRAMES = 120  # frames the runtime must have seen before the idle-time check
NO_IDLE_FRACTION = 0.05  # headroom per frame below this share of the frame budget: no idle time
STOP_JOIN_S = 5.0
LOADER_JOIN_S = 1.0

InboxBatch = tuple[list[tuple[int, str]], list[str]]  # requests (id, JSON), GPU frames (JSON)


@dataclass(frozen=True)
class BridgeConfig:
    """What the Godot project settings ask for.

    model: "bundled" or a model folder. device: torch device ("cpu", "cuda").
    torch_threads: intra-op threads for the LLM (1 leaves the other cores to the game).
    switch_interval_ms: Python's GIL switch interval; a short one keeps the pump thread (which
    submits requests) from waiting long behind the runtime's worker.
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
        result = cls(**{key: config[key] for key in known if key in config})
        if not isinstance(result.model, str) or not result.model:
            raise EngineBridgeError("lego_embed/model/path must be a non-empty string ('bundled')")
        if not isinstance(result.torch_threads, int) or result.torch_threads < 1:
            raise EngineBridgeError("lego_embed/runtime/torch_threads must be an int >= 1")
        if not result.switch_interval_ms > 0:
            raise EngineBridgeError("lego_embed/runtime/switch_interval_ms must be > 0")
        if not isinstance(result.runtime_options, dict):
            raise EngineBridgeError("lego_embed/runtime/options must be a Dictionary")
        return result


def _plain(value: Any) -> Any:
    """json.dumps fallback: numpy scalars as Python numbers, anything else as its text."""
    item = getattr(value, "item", None)
    return item() if callable(item) else str(value)


def to_json(value: Any) -> str:
    """JSON text for the engine side (numpy numbers and odd objects included)."""
    return json.dumps(value, default=_plain)


REQUEST_OPTIONS = {"fallback": str, "supersede": bool}
OUTPUTS = ("choice", "line", "choice_then_line", "check")
TEMPLATE_CACHE_SIZE = 256


@dataclass(frozen=True)
class BridgeRequest:
    """One request from LegoNPC, checked (see the module docstring for the fields). options:
    the runtime's options for when the work does not fit (`parse_request_options`)."""

    npc_id: str
    output: str
    fields: dict[str, Any]
    actions: list[str]
    deadline_ms: float
    static_prompt: str = ""
    prompt_template: str = ""
    persona: str | None = None
    say_for: str | None = None
    max_tokens: int = 24
    stop: tuple[str, ...] = ()
    pace_tokens_per_s: float = DEFAULT_PACE_TOKENS_PER_S
    options: dict[str, Any] = field(default_factory=dict)


def _typed(spec: Mapping[str, Any], key: str, kinds: tuple[type, ...], default: Any) -> Any:
    value = spec.get(key, default)
    if value is None or (isinstance(value, kinds) and not isinstance(value, bool)):
        return value
    raise EngineBridgeError(f"request field {key} must be {kinds[0].__name__}, got {value!r}")


def parse_request(payload: list[Any]) -> BridgeRequest:
    """The decoded JSON array the C bridge wrote for request(npc_id, spec, actions,
    deadline_ms[, options]), checked (EngineBridgeError names what is wrong)."""
    if not isinstance(payload, list) or len(payload) not in (4, 5):
        raise EngineBridgeError(
            f"a request is [npc_id, spec, actions, deadline_ms(, options)], got {payload!r}"
        )
    npc_id, spec, actions, deadline_ms = payload[:4]
    if not isinstance(spec, dict):
        raise EngineBridgeError(f"the state must be a Dictionary, got {spec!r}")
    if not isinstance(actions, list) or not all(isinstance(a, str) for a in actions):
        raise EngineBridgeError(f"allowed actions must be an Array of Strings, got {actions!r}")
    if isinstance(deadline_ms, bool) or not isinstance(deadline_ms, int | float):
        raise EngineBridgeError(f"deadline_ms must be a number, got {deadline_ms!r}")
    options = parse_request_options(payload)
    if "output" not in spec:  # request_decision(state): the combat task's state itself
        return BridgeRequest(str(npc_id), "choice", spec, actions, float(deadline_ms),
                             options=options)
    output = spec["output"]
    if output not in OUTPUTS:
        raise EngineBridgeError(f"output {output!r} is not one of {', '.join(OUTPUTS)}")
    fields = spec.get("fields", {})
    if not isinstance(fields, dict):
        raise EngineBridgeError(f"fields must be a Dictionary, got {fields!r}")
    stop = spec.get("stop", [])
    if not isinstance(stop, list) or not all(isinstance(s, str) for s in stop):
        raise EngineBridgeError(f"stop must be an Array of Strings, got {stop!r}")
    max_tokens = _typed(spec, "max_tokens", (int, float), 24)
    return BridgeRequest(
        npc_id=str(npc_id), output=output, fields=fields, actions=actions,
        deadline_ms=float(deadline_ms),
        static_prompt=_typed(spec, "static_prompt", (str,), "") or "",
        prompt_template=_typed(spec, "prompt_template", (str,), "") or "",
        persona=_typed(spec, "persona", (str,), None),
        say_for=_typed(spec, "say_for", (str,), None),
        max_tokens=int(max_tokens), stop=tuple(stop),
        pace_tokens_per_s=float(_typed(spec, "pace_tokens_per_s", (int, float),
                                       DEFAULT_PACE_TOKENS_PER_S)),
        options=options,
    )


class RequestBuilder:
    """Turns BridgeRequests into runtime Requests; keeps parsed prompt templates."""

    def __init__(self) -> None:
        self._templates: dict[str, Any] = {}

    def template(self, text: str) -> Any:
        """The checked PromptTemplate for `text` (PromptTemplateError if it is malformed)."""
        from lego_embed.npc.prompt_template import PromptTemplate

        template = self._templates.get(text)
        if template is None:
            template = PromptTemplate(text)
            if len(self._templates) >= TEMPLATE_CACHE_SIZE:
                self._templates.pop(next(iter(self._templates)))
            self._templates[text] = template
        return template

    def build(self, bridge: BridgeRequest, **callbacks: Any) -> Any:
        """A runtime Request (typed errors for a missing field, bad actions, ...)."""
        from lego_embed.npc.output_spec import Choice, ChoiceThenLine, Line
        from lego_embed.npc.prompt_parts import Prompt
        from lego_embed.runtime.request import Request

        if not bridge.prompt_template:
            return self._combat(bridge, **callbacks)
        filled = self.template(bridge.prompt_template).fill(bridge.fields)
        warnings = tuple(
            f"field '{name}' is not in the prompt template, so the model never sees it "
            "(check its name)" for name in filled.unused
        )
        output: Any
        if bridge.output == "choice":
            output = Choice(bridge.actions)
        elif bridge.output == "line":
            output = Line(bridge.max_tokens, bridge.stop)
        else:
            output = ChoiceThenLine(bridge.actions, bridge.max_tokens, bridge.stop)
        return Request(
            npc_id=bridge.npc_id, prompt=Prompt(bridge.static_prompt, filled.text),
            output=output, deadline_ms=bridge.deadline_ms,
            pace_tokens_per_s=bridge.pace_tokens_per_s, warnings=warnings, **bridge.options,
            **callbacks,
        )

    @staticmethod
    def _combat(bridge: BridgeRequest, **callbacks: Any) -> Any:
        from lego_embed.tasks.combat.request import combat_request

        state = dict(bridge.fields)
        if bridge.persona and "persona" not in state:
            state["persona"] = bridge.persona
        return combat_request(
            bridge.npc_id, state, bridge.actions, bridge.deadline_ms, output=bridge.output,
            say_for=bridge.say_for, max_tokens=bridge.max_tokens,
            pace_tokens_per_s=bridge.pace_tokens_per_s, **bridge.options, **callbacks,
        )


def parse_request_options(payload: list[Any]) -> dict[str, Any]:
    """The request's options Dictionary (5th element) as `runtime.request.Request` fields:
    fallback (an action, "" for none) and supersede (bool)."""
    if len(payload) < 5 or payload[4] is None:
        return {}
    options = payload[4]
    if not isinstance(options, dict):
        raise EngineBridgeError(f"request options must be a Dictionary, got {options!r}")
    out: dict[str, Any] = {}
    for key, value in options.items():
        expected = REQUEST_OPTIONS.get(key)
        if expected is None:
            raise EngineBridgeError(
                f"unknown request option {key!r}; the options are {sorted(REQUEST_OPTIONS)}"
            )
        if not isinstance(value, expected):
            raise EngineBridgeError(
                f"request option {key!r} must be a {expected.__name__}, got {value!r}"
            )
        if key == "fallback" and value == "":
            continue
        out[key] = value
    return out


def decision_result(bridge_request_id: int, decision: Any) -> dict[str, Any]:
    """A Runtime Decision as the result LegoRuntime dispatches (kind "decision"), under the id
    the bridge gave the request."""
    fields = dataclasses.asdict(decision)
    fields["runtime_request_id"] = fields.pop("request_id")
    return {"kind": "decision", "request_id": bridge_request_id, **fields}


def overload_result(event: Any) -> dict[str, Any]:
    """A Runtime OverloadEvent as the result LegoRuntime dispatches (kind "overloaded")."""
    return {"kind": "overloaded", **event.as_dict()}


def health_result(health: Any) -> dict[str, Any]:
    """The Runtime's WorkerHealth as the result LegoRuntime dispatches (kind "health")."""
    return {"kind": "health", **health.as_dict()}


def stream_result(kind: str, bridge_request_id: int, event: Any) -> dict[str, Any]:
    """A streamed ActionEvent (kind "action") or TokenEvent (kind "token") for LegoRuntime."""
    fields = dataclasses.asdict(event)
    fields["runtime_request_id"] = fields.pop("request_id")
    return {"kind": kind, "request_id": bridge_request_id, **fields}


def failed_result(bridge_request_id: int, npc_id: str, error: BaseException) -> dict[str, Any]:
    """A request that failed before inference (bad state, bad actions, no model)."""
    return {
        "kind": "decision", "request_id": bridge_request_id, "npc_id": npc_id, "action": None,
        "error": f"{type(error).__name__}: {error}", "status": "failed",
    }


class BridgeEvents:
    """The engine's events as the C bridge queues them, for the runtime's worker to read itself
    (an ``EngineEventSource`` for ``Runtime.attach_events``). ``bridge`` is the C module
    (``_lego_bridge``): its ``take_events``, ``has_events``, ``events_bell`` and
    ``arm_events_bell``. The C side refuses unknown kinds, so every event read is valid.
    ``delivered`` counts by kind the events the runtime read, ``discarded`` those
    ``discard()`` took without delivering them (before the model is ready, after it stopped);
    ``received()`` is both."""

    closed: bool = False  # the C ring lives as long as the game

    def __init__(self, bridge: Any) -> None:
        self._take = bridge.take_events
        self._has = bridge.has_events
        self._arm = bridge.arm_events_bell
        self._bell = bridge.events_bell()
        self.delivered = dict.fromkeys(EVENT_KINDS, 0)
        self.discarded = dict.fromkeys(EVENT_KINDS, 0)

    def received(self) -> dict[str, int]:
        """Every event taken from the C ring, by kind."""
        return {kind: self.delivered[kind] + self.discarded[kind] for kind in EVENT_KINDS}

    def read_events(self) -> list[EngineEvent]:
        events = [EngineEvent(kind, name, t_ns) for kind, name, t_ns in self._take()]
        for event in events:
            self.delivered[event.kind] += 1
        return events

    def has_unread(self) -> bool:
        return self._has()

    def wake_fileno(self) -> int:
        return self._bell

    def clear_wake(self) -> None:
        self._arm()

    def discard(self) -> None:
        for kind, _, _ in self._take():
            self.discarded[kind] += 1


class GodotSession:
    """One running game: loads the model, attaches the engine's events to the Runtime, then
    pumps requests into it and results back. ``events`` is the C bridge's event ring
    (``BridgeEvents``); ``wait_inbox(timeout_s)`` returns (requests, GPU frames) from the
    engine; ``push_result(json_text)`` queues one result for the engine's next poll();
    ``on_unstoppable()`` is called by stop() when the loading thread cannot be joined;
    ``counters()`` is the C side's counters (its refused events become an error result)."""

    def __init__(
        self,
        config: BridgeConfig,
        events: BridgeEvents,
        wait_inbox: Callable[[float], InboxBatch],
        push_result: Callable[[str], None],
        on_unstoppable: Callable[[], None] | None = None,
        counters: Callable[[], dict[str, int]] | None = None,
    ) -> None:
        self.config = config
        self._counters = counters
        self._refused_reported = 0
        self._on_unstoppable = on_unstoppable
        self._events = events
        self._events_attached = False
        self._wait_inbox = wait_inbox
        self._push_text = push_result
        self._runtime: Any = None
        self._load_error: str | None = None
        self._stopping = threading.Event()
        self._gpu = GpuTimeline()
        self._requests = 0
        self._health_reported: Any = None
        self._builder = RequestBuilder()
        self._idle_checked = False
        self._decisions = 0
        self._failed = 0
        self._started_ns = time.monotonic_ns()
        self._loader = threading.Thread(target=self._load, name="lego-embed-load", daemon=True)
        self._pump = threading.Thread(target=self._run_pump, name="lego-embed-pump", daemon=True)
        self._loader.start()
        self._pump.start()

    def _push(self, result: dict[str, Any]) -> None:
        self._push_text(to_json(result))

    def _load(self) -> None:
        try:
            load_start_ns = time.monotonic_ns()
            runtime, info = build_runtime(self.config)
            info["load_s"] = (time.monotonic_ns() - load_start_ns) / 1e9
        except Exception as exc:  # every failure reaches the game as one clear message
            self._load_error = f"{type(exc).__name__}: {exc}"
            self._push({"kind": "load_failed", "reason": self._load_error})
            return
        if self._stopping.is_set():
            runtime.stop()
            return
        self._runtime = runtime
        self._push({"kind": "ready", **info})

    def _attach_events(self) -> None:
        """Until the model is ready the engine's events are dropped (a runtime that starts
        later begins with the frames it sees); then the worker reads them itself."""
        if self._events_attached:
            return
        self._events.discard()
        if self._runtime is not None:
            self._runtime.attach_events(self._events)
            self._events_attached = True

    def _forward_gpu_frame(self, text: str) -> None:
        events = self._gpu.events(GpuTimestampFrame.from_json(text))
        if self._runtime is not None:
            for event in events:
                self._runtime.on_event(event)

    def _submit(self, bridge_request_id: int, text: str) -> None:
        self._requests += 1
        npc_id = "?"
        try:
            payload = json.loads(text)
            npc_id = str(payload[0])
            bridge = parse_request(payload)
            if bridge.output == "check":
                self._check(bridge_request_id, bridge)
                return
            if self._runtime is None:
                raise EngineBridgeError(
                    f"the NPC model failed to load: {self._load_error}" if self._load_error
                    else "the NPC model is still loading; wait for LegoRuntime's runtime_ready"
                )

            def deliver(decision: Any) -> None:
                self._decisions += 1
                self._push(decision_result(bridge_request_id, decision))

            def action(event: Any) -> None:
                self._push(stream_result("action", bridge_request_id, event))

            def token(event: Any) -> None:
                self._push(stream_result("token", bridge_request_id, event))

            request = self._builder.build(bridge, callback=deliver, on_action=action,
                                          on_token=token)
            self._runtime.submit(request)
        except Exception as exc:  # the game hears about it through decision_failed
            self._failed += 1
            self._push(failed_result(bridge_request_id, npc_id, exc))

    def _check(self, bridge_request_id: int, bridge: BridgeRequest) -> None:
        """Checks an NPC's prompt template when it is set: "checked" with the error (None when
        it is fine) and the fields it names."""
        try:
            fields = list(self._builder.template(bridge.prompt_template).fields)
            error = None
        except Exception as exc:  # reported to the NPC, which emits decision_failed
            fields, error = [], f"{type(exc).__name__}: {exc}"
        self._push({"kind": "checked", "request_id": bridge_request_id,
                    "npc_id": bridge.npc_id, "error": error, "fields": fields})

    def _pump_once(self, timeout_s: float) -> None:
        requests, gpu_frames = self._wait_inbox(timeout_s)
        self._attach_events()
        for text in gpu_frames:
            self._forward_gpu_frame(text)
        for bridge_request_id, text in requests:
            self._submit(bridge_request_id, text)
        self._report_health()
        self._report_overload()
        self._report_refused_events()

    def _report_refused_events(self) -> None:
        """Tells the game when the engine sent events of an unknown kind (refused in C)."""
        if self._counters is None:
            return
        refused = self._counters().get("events_refused", 0)
        if refused > self._refused_reported:
            self._push({"kind": "error", "reason": (
                f"EngineBridgeError: {refused - self._refused_reported} engine event(s) of an "
                f"unknown kind were refused; LegoBridge.event takes one of "
                f"{', '.join(EVENT_KINDS)}")})
            self._refused_reported = refused

    def _report_overload(self) -> None:
        """Tells the game when the runtime became overloaded or recovered."""
        if self._runtime is not None:
            for event in self._runtime.poll_overload():
                self._push(overload_result(event))

    def _report_health(self) -> None:
        """Tells the game when the worker's health changed (state, restarts, last error)."""
        if self._runtime is None:
            return
        health = self._runtime.health()
        if health != self._health_reported:
            self._health_reported = health
            self._push(health_result(health))

    def _check_idle_time(self) -> None:
        """Once, after IDLE_CHECK_FRAMES frames: warns (with the fix) when the game leaves the
        model no idle time between and inside its frames."""
        runtime = self._runtime
        if self._idle_checked or runtime is None or runtime.tracker.frames < IDLE_CHECK_FRAMES:
            return
        self._idle_checked = True
        per_frame_ms = runtime.tracker.headroom_per_frame_ms()
        budget_ms = runtime.config.frame_budget_ms
        if per_frame_ms < NO_IDLE_FRACTION * budget_ms:
            self._push({"kind": "warning", "reason": (
                f"the game leaves the NPC model {per_frame_ms:.2f} ms of idle time per frame "
                f"(frame budget {budget_ms:.1f} ms), so NPC answers will be late: cap the frame "
                "rate (Engine.target_fps, Project Settings > Debug > Settings > Force Fps) or "
                "give the frame less work")})

    def _run_pump(self) -> None:
        yield_to_engine_threads()  # a request() that wakes the pump keeps the main thread's core
        while not self._stopping.is_set():
            try:
                self._check_idle_time()
                self._pump_once(ENGINE_WAIT_S)
            except Exception as exc:  # keep pumping; tell the game
                self._push({"kind": "error", "reason": f"{type(exc).__name__}: {exc}"})

    def stats(self) -> dict[str, Any]:
        """Counters of the bridge (events received from the engine and read by the Runtime,
        by kind; requests, decisions, failures), the GPU timeline's (Godot 4) and the
        Runtime's stats()."""
        result: dict[str, Any] = {
            "events": self._events.received(),
            "events_forwarded": dict(self._events.delivered),
            "requests": self._requests,
            "decisions": self._decisions,
            "failed_requests": self._failed,
            "model_ready": self._runtime is not None,
            "uptime_s": (time.monotonic_ns() - self._started_ns) / 1e9,
            "gpu_timestamps": self._gpu.stats(),
        }
        if self._runtime is not None:
            result["runtime"] = self._runtime.stats()
        return result

    def stop(self) -> dict[str, Any]:
        """Stop the pump (after it submitted every request the engine queued) and the Runtime;
        waits at most a few seconds for each thread. Returns the final stats(), with the
        events still queued counted as received."""
        self._stopping.set()
        self._pump.join(STOP_JOIN_S)
        self._pump_once(0.0)
        if self._runtime is not None:
            self._runtime.stop()
        self._events.discard()
        final = self.stats()
        self._loader.join(LOADER_JOIN_S)
        if self._loader.is_alive() and self._on_unstoppable is not None:
            self._on_unstoppable()  # the model is still loading: exit must not wait for it
        return final


def build_runtime(config: BridgeConfig) -> tuple[Any, dict[str, Any]]:
    """Load the model (and its skip bundle when the folder has one) and start a Runtime.

    Returns the started Runtime and a description for the ``ready`` report (a broken skip
    bundle is reported there as ``skip_bundle_error``; the model then runs at level 0).
    """
    import torch

    from lego_embed.model.loading import load_model
    from lego_embed.runtime.runtime import Runtime, RuntimeConfig

    torch.set_num_threads(config.torch_threads)
    loaded = load_model(config.model, device=config.device)
    bundle, bundle_error = None, None
    bundle_dir = Path(loaded.path) / "skip_bundle"
    if bundle_dir.is_dir():
        from lego_embed.skip.bundle import SkipBundle

        try:
            bundle = SkipBundle.load(bundle_dir, loaded)
        except SkipBundleError as exc:  # decide with the full model rather than not at all
            bundle_error = f"{type(exc).__name__}: {exc}; running without layer skipping"
    runtime = Runtime(loaded, bundle=bundle, config=RuntimeConfig(**config.runtime_options))
    runtime.start()
    info = {
        "model": str(loaded.path),
        "family": loaded.family,
        "num_layers": loaded.num_layers,
        "device": str(loaded.device),
        "skip_levels": [level.level for level in runtime.levels],
        "skip_bundle_error": bundle_error,
        "python": sys.version.split()[0],
        "prefix": sys.prefix,
    }
    return runtime, info


_session: GodotSession | None = None


def _with_counters(result: dict[str, Any]) -> str:
    import _lego_bridge  # the C bridge's built-in module; exists only inside Godot

    result["bridge"] = _lego_bridge.counters()
    return to_json(result)


def start(config_json: str) -> str:
    """Start (or restart) the session for this game; returns {"ok": true} at once."""
    global _session
    import _lego_bridge

    config = BridgeConfig.from_mapping(json.loads(config_json))
    sys.setswitchinterval(config.switch_interval_ms / 1000.0)
    if _session is not None:
        _session.stop()
    _session = GodotSession(
        config, BridgeEvents(_lego_bridge), _lego_bridge.wait_inbox, _lego_bridge.push_result,
        _lego_bridge.exit_without_destructors, _lego_bridge.counters,
    )
    return to_json({"ok": True, "python": sys.version.split()[0], "prefix": sys.prefix})


def stats() -> str:
    """The session's counters, the Runtime's stats and the C side's counters, as JSON."""
    if _session is None:
        raise EngineBridgeError("the Godot bridge is not started; LegoRuntime calls start() first")
    return _with_counters(_session.stats())


def stop() -> str:
    """Stop the session's threads (the game is quitting); returns the final stats as JSON."""
    global _session
    if _session is None:
        return to_json({})
    final = _session.stop()
    _session = None
    return _with_counters(final)
