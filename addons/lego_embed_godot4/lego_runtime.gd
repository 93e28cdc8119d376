extends Node
## Autoload "LegoRuntime": owns the native bridge, feeds the runtime with the engine's frame
## events and delivers results (actions, streamed line tokens, finished decisions and lines) to
## LegoNPC nodes once per frame. The same API, signals and events as the Godot 3 addon, plus the
## GPU's own pass boundaries.
##
## The runtime's frame budget comes from the engine: 1000 / Engine.max_fps when the game caps
## its frame rate, else one 60 Hz vsync period (a lego_embed/runtime/options "frame_budget_ms"
## overrides it). A game that leaves no idle time (an uncapped frame rate, or frames that take
## the whole budget) gets one warning with the fix.
##
## The game's log gets one line per distinct problem ("lego_embed: ..."), however often it
## happens; every failure still reaches its LegoNPC as decision_failed.
##
## Events per frame (timestamps are taken in C with CLOCK_MONOTONIC):
##   frame_begin                      first physics/process callback of a main-loop iteration
##   pass_begin/pass_end "physics"    around each physics step (this node runs first, a marker
##                                    child with the highest process priority runs last)
##   pass_begin/pass_end "process"    around the idle (_process) callbacks
##   pass_begin/pass_end "render"     RenderingServer.frame_pre_draw .. frame_post_draw
##   frame_end                        frame_post_draw
## The gap from frame_end to the next frame_begin is the inter-frame headroom.
## On a RenderingDevice driver (Vulkan, D3D12, Metal) the GPU timestamps RenderingDevice read
## back (a frame or more late) are forwarded too; Python maps them onto the same clock as GPU
## passes (lego_embed.engines.gpu_timestamps).

signal runtime_ready(info: Dictionary)
signal runtime_failed(reason: String)
signal runtime_error(reason: String)
## The NPC worker's health changed: health is {"state", "restarts", "last_error"} (see `health`).
signal health_changed(health: Dictionary)
## The game asks for more decisions per second than the frame headroom sustains (active = true),
## or no longer (active = false). info: demand_per_s, sustainable_per_s (at the largest skip
## level), full_model_per_s, target_per_s (come down to this rate: fewer NPCs deciding, lower
## actions_per_minute, longer deadlines; docs/GODOT.md).
signal overloaded(active: bool, info: Dictionary)

const Settings = preload("res://addons/lego_embed/lego_settings.gd")
const BRIDGE_CLASS = &"LegoBridge"
const BRIDGE_LIBRARY = "res://addons/lego_embed/native/build/liblego_bridge.so"
const FIRST = -1000000000
const LAST = 1000000000
const FRAME_RATE_CHECK_FRAMES = 120   # frames drawn before the frame rate is compared to the cap
const UNCAPPED_FACTOR = 1.5           # measured FPS this far above the budget: frames are unpaced

var is_ready := false        ## the model is loaded and the runtime runs
var failure := ""            ## why the runtime cannot decide ("" while fine)
var ready_info := {}         ## what the bridge reported when the model was ready
## The NPC worker's health. state: "not_started" (model loading), "running", "failed" (the
## worker faulted repeatedly and stopped, or the model did not load; requests fail at once) or
## "stopped". restarts: times the worker recovered from an internal error (requests in flight
## then failed). last_error: the latest internal error as "Type: message", or null.
var health := {"state": "not_started", "restarts": 0, "last_error": null}
var is_overloaded := false   ## the last `overloaded` signal's state
var overload_info := {}      ## the last `overloaded` signal's info
var frames_drawn := 0        ## frame_post_draw signals seen since start
var bridge_calls := 0        ## calls into the bridge from the main thread
var bridge_usec_total := 0   ## main-thread microseconds spent in bridge calls
var frame_bridge_usec := PackedInt64Array()  ## bridge microseconds of each drawn frame
var usec_by_call := {}       ## main-thread microseconds per bridge method (start/stop included)
var gpu_frames_sent := 0     ## read-back GPU timestamp frames forwarded to the bridge

var final_stats := {}        ## stats() as they were when the runtime stopped
var engine_frames_at_start := 0  ## Engine.get_frames_drawn() when the bridge started

var logged := {}             ## every distinct problem line printed so far -> times it happened
var frame_budget_ms := 0.0   ## the frame budget the runtime was given (ms)

var _bridge: Object = null
var _rendering_device: RenderingDevice = null
var _last_gpu_frame := -1
var _pending := {}           # request_id -> WeakRef(LegoNPC)
var _frame_rate_checked := false
var _frame_open := false
var _usec_this_frame := 0


class PassEndMarker:
	extends Node
	## Runs after every other node's callbacks of the same kind: closes the passes.
	var runtime  # the LegoRuntime autoload

	func _ready() -> void:
		process_priority = LAST
		process_physics_priority = LAST
		process_mode = Node.PROCESS_MODE_ALWAYS

	func _physics_process(_delta: float) -> void:
		runtime._event("pass_end", "physics")

	func _process(_delta: float) -> void:
		runtime._event("pass_end", "process")


func _ready() -> void:
	process_priority = FIRST
	process_physics_priority = FIRST
	process_mode = Node.PROCESS_MODE_ALWAYS
	var marker := PassEndMarker.new()
	marker.name = "PassEndMarker"
	marker.runtime = self
	add_child(marker)
	engine_frames_at_start = Engine.get_frames_drawn()
	RenderingServer.frame_pre_draw.connect(_on_frame_pre_draw)
	RenderingServer.frame_post_draw.connect(_on_frame_post_draw)
	_start_bridge()
	if _bridge != null and bool(Settings.read("lego_embed/runtime/gpu_timestamps")):
		_rendering_device = RenderingServer.get_rendering_device()  # null on the OpenGL driver
		if _rendering_device != null:
			RenderingServer.viewport_set_measure_render_time(get_viewport().get_viewport_rid(), true)


func _start_bridge() -> void:
	if not Settings.enabled():
		failure = "lego_embed is disabled (lego_embed/runtime/enabled or LEGO_EMBED_ENABLED=0)"
		return
	if not FileAccess.file_exists(BRIDGE_LIBRARY) or not ClassDB.class_exists(BRIDGE_CLASS):
		_fail("the native bridge is not built or not loaded (%s, class LegoBridge): run `make godot4-bridge` or addons/lego_embed_godot4/native/build.sh, then open the project in the editor once (it lists the extension in .godot/extension_list.cfg)" % BRIDGE_LIBRARY)
		return
	_bridge = ClassDB.instantiate(BRIDGE_CLASS)
	var config := Settings.bridge_config()
	if not config["runtime_options"].has("frame_budget_ms"):
		config["runtime_options"]["frame_budget_ms"] = Settings.engine_frame_budget_ms()
	frame_budget_ms = float(config["runtime_options"]["frame_budget_ms"])
	var t0 := Time.get_ticks_usec()
	var result := _parse(_bridge.start(config))
	_account(t0, "start")
	if result.has("error"):
		_fail("the Python bridge did not start: %s" % result["error"])
		_bridge = null


func _fail(reason: String) -> void:
	failure = reason
	log_once(reason)
	runtime_failed.emit(reason)
	_set_health({"state": "failed", "restarts": health["restarts"], "last_error": reason})
	for request_id: int in _pending.keys():
		_deliver_failure(request_id, reason)


## Books the main-thread time of one bridge call. start/stop are one-off (model load, shutdown)
## and stay out of the per-frame numbers.
func _account(t0_usec: int, method: String) -> void:
	var spent := Time.get_ticks_usec() - t0_usec
	bridge_calls += 1
	usec_by_call[method] = usec_by_call.get(method, 0) + spent
	if method != "start" and method != "stop":
		bridge_usec_total += spent
		_usec_this_frame += spent


func _event(kind: String, event_name: String) -> void:
	if _bridge == null:
		return
	var t0 := Time.get_ticks_usec()
	_bridge.event(kind, event_name)
	_account(t0, "event")


func _begin_frame_if_needed() -> void:
	if not _frame_open:
		_frame_open = true
		_event("frame_begin", "")


func _physics_process(_delta: float) -> void:
	_begin_frame_if_needed()
	_event("pass_begin", "physics")


func _process(_delta: float) -> void:
	_begin_frame_if_needed()
	_poll()
	_event("pass_begin", "process")


func _on_frame_pre_draw() -> void:
	_begin_frame_if_needed()
	_event("pass_begin", "render")


func _on_frame_post_draw() -> void:
	_event("pass_end", "render")
	_event("frame_end", "")
	_send_gpu_timestamps()
	_frame_open = false
	frames_drawn += 1
	frame_bridge_usec.append(_usec_this_frame)
	_usec_this_frame = 0
	if not _frame_rate_checked and frames_drawn >= FRAME_RATE_CHECK_FRAMES and _bridge != null:
		_check_frame_rate()


## One line in the game's log per distinct problem (printerr, no stack trace); repeats are
## counted in `logged`.
func log_once(message: String) -> void:
	var line := "lego_embed: " + message
	if logged.has(line):
		logged[line] += 1
		return
	logged[line] = 1
	printerr(line)


func _check_frame_rate() -> void:
	_frame_rate_checked = true
	var fps := Engine.get_frames_per_second()
	var budget_fps := 1000.0 / frame_budget_ms
	if fps > budget_fps * UNCAPPED_FACTOR:
		log_once("the game draws %d frames per second, faster than the %.1f ms frame budget (%d FPS) the NPC model runs beside: frames come back to back and leave it no idle time, so NPC answers will be late. Cap the frame rate: Engine.max_fps = 60 (Project Settings > Application > Run > Max FPS), or set lego_embed/runtime/options {\"frame_budget_ms\": ...}" % [fps, frame_budget_ms, budget_fps])


## Forwards the GPU timestamps RenderingDevice read back during this frame's draw: names, GPU
## ns, CPU ticks (us) when recorded. They belong to the frame drawn get_frame_delay() - 1 draws
## earlier (get_captured_timestamps_frame() is the number of the frame that reuses their slot).
func _send_gpu_timestamps() -> void:
	if _rendering_device == null or _bridge == null:
		return
	var t0 := Time.get_ticks_usec()
	var slot_frame := _rendering_device.get_captured_timestamps_frame()
	var count := _rendering_device.get_captured_timestamps_count()
	if slot_frame == _last_gpu_frame or count == 0:
		return
	_last_gpu_frame = slot_frame
	var frame := slot_frame - (_rendering_device.get_frame_delay() - 1)
	var names := PackedStringArray()
	var gpu_ns := PackedInt64Array()
	var cpu_us := PackedInt64Array()
	for i in count:
		names.append(_rendering_device.get_captured_timestamp_name(i))
		gpu_ns.append(_rendering_device.get_captured_timestamp_gpu_time(i))
		cpu_us.append(_rendering_device.get_captured_timestamp_cpu_time(i))
	_bridge.gpu_timestamps({"frame": frame, "drawn": Engine.get_frames_drawn(), "names": names,
			"gpu_ns": gpu_ns, "cpu_us": cpu_us, "ticks_us": Time.get_ticks_usec()})
	gpu_frames_sent += 1
	_account(t0, "gpu_timestamps")


func _poll() -> void:
	if _bridge == null:
		return
	var t0 := Time.get_ticks_usec()
	var texts: Array = _bridge.poll()
	_account(t0, "poll")
	for text: String in texts:
		var result := _parse(text)
		match result.get("kind", ""):
			"decision":
				_deliver_decision(result)
			"action", "token", "checked":
				_deliver_stream(result)
			"warning":
				log_once(str(result.get("reason", "")))
			"ready":
				is_ready = true
				ready_info = result
				runtime_ready.emit(result)
			"load_failed":
				_fail("the NPC model did not load: %s" % result.get("reason", "?"))
			"error":
				log_once(str(result.get("reason", "")))
				runtime_error.emit(str(result.get("reason", "")))
			"overloaded":
				is_overloaded = bool(result.get("overloaded", false))
				overload_info = {
					"demand_per_s": float(result.get("demand_per_s", 0.0)),
					"sustainable_per_s": float(result.get("sustainable_per_s", 0.0)),
					"full_model_per_s": float(result.get("full_model_per_s", 0.0)),
					"target_per_s": float(result.get("target_per_s", 0.0)),
				}
				overloaded.emit(is_overloaded, overload_info)
			"health":
				var reported := {"state": str(result.get("state", "")), "restarts": int(result.get("restarts", 0)), "last_error": result.get("last_error")}
				if reported["state"] == "failed" and health["state"] != "failed":
					log_once("the NPC worker stopped: %s" % str(reported["last_error"]))
				elif reported["restarts"] > health["restarts"]:
					log_once("the NPC worker restarted after %s" % str(reported["last_error"]))
				_set_health(reported)


## Updates `health`; emits health_changed when it changed.
func _set_health(new_health: Dictionary) -> void:
	if new_health["state"] == health["state"] and new_health["restarts"] == health["restarts"] and new_health["last_error"] == health["last_error"]:
		return
	health = new_health
	health_changed.emit(health)


## JSON text from the bridge as a Dictionary ({"error": ...} if it is not a JSON object).
static func _parse(text: String) -> Dictionary:
	var parsed: Variant = JSON.parse_string(text)
	if typeof(parsed) != TYPE_DICTIONARY:
		return {"error": "unreadable bridge result: %s" % text}
	return parsed


func _deliver_decision(result: Dictionary) -> void:
	var request_id := int(result.get("request_id", -1))
	result["request_id"] = request_id
	var error: Variant = result.get("error")
	if error != null:
		_log_failure(str(result.get("npc_id", "?")), str(error))
	for warning: Variant in result.get("warnings", []):
		log_once(str(warning))
	var ref: WeakRef = _pending.get(request_id)
	_pending.erase(request_id)
	var npc = ref.get_ref() if ref != null else null  # a LegoNPC
	if npc != null:
		npc._deliver(result)


## A request's failure: one log line per distinct reason (the first NPC it happened to named).
func _log_failure(npc_id: String, reason: String) -> void:
	for line: String in logged.keys():
		if line.ends_with(": " + reason) and line.begins_with("lego_embed: decision failed for "):
			logged[line] += 1
			return
	log_once("decision failed for %s: %s" % [npc_id, reason])


## An action, a line token or a template check: goes to its LegoNPC, which stays registered
## until the request's final result.
func _deliver_stream(result: Dictionary) -> void:
	var request_id := int(result.get("request_id", -1))
	result["request_id"] = request_id
	var ref: WeakRef = _pending.get(request_id)
	if result.get("kind") == "checked":
		_pending.erase(request_id)
		var error: Variant = result.get("error")
		if error != null:
			_log_failure(str(result.get("npc_id", "?")), str(error))
	var npc = ref.get_ref() if ref != null else null  # a LegoNPC
	if npc != null:
		npc._deliver(result)


func _deliver_failure(request_id: int, reason: String) -> void:
	var ref: WeakRef = _pending.get(request_id)
	_pending.erase(request_id)
	var npc = ref.get_ref() if ref != null else null  # a LegoNPC
	if npc != null:
		npc._deliver({"kind": "decision", "request_id": request_id, "error": reason})


## Called by LegoNPC's request_* functions. spec: the request Dictionary (output, fields,
## static_prompt, prompt_template, persona, say_for, max_tokens, stop, pace_tokens_per_s; or a
## combat state). options: {"fallback": action or "", "supersede": bool} (what the runtime does
## when the work does not fit). Returns the request id, or -1 after scheduling a decision_failed
## on the NPC.
func submit(npc: Node, npc_id: String, spec: Dictionary, actions: Array, deadline_ms: float, options := {}) -> int:
	if _bridge == null or failure != "" or not is_ready:
		var reason := failure
		if reason == "":
			reason = "the NPC model is still loading; wait for LegoRuntime's runtime_ready signal" if _bridge != null else "the lego_embed bridge is not running"
		npc.call_deferred("_deliver", {"kind": "decision", "request_id": -1, "error": reason})
		return -1
	return _send(npc, npc_id, spec, actions, deadline_ms, options)


## Called by LegoNPC when its prompt_template is set: the runtime checks it (also while the model
## loads) and answers with a "checked" result; a broken template becomes decision_failed.
func check_template(npc: Node, npc_id: String, template: String) -> void:
	if _bridge == null or failure != "":
		return
	_send(npc, npc_id, {"output": "check", "prompt_template": template}, [], 1.0)


func _send(npc: Node, npc_id: String, spec: Dictionary, actions: Array, deadline_ms: float, options := {}) -> int:
	var t0 := Time.get_ticks_usec()
	var result: Dictionary = _bridge.request(npc_id, spec, actions, deadline_ms, options)
	_account(t0, "request")
	if result.has("error"):
		_log_failure(npc_id, str(result["error"]))
		npc.call_deferred("_deliver", {"kind": "decision", "request_id": -1, "error": result["error"]})
		return -1
	var request_id: int = result["request_id"]
	_pending[request_id] = weakref(npc)
	return request_id


## The bridge's and the runtime's counters (events by kind, decisions, runtime stats).
func stats() -> Dictionary:
	if _bridge == null:
		return {}
	var t0 := Time.get_ticks_usec()
	var result := _parse(_bridge.stats())
	_account(t0, "stats")
	return result


## Main-thread cost of the bridge per drawn frame, in microseconds.
func bridge_cost() -> Dictionary:
	var values := Array(frame_bridge_usec)
	values.sort()
	var n := values.size()
	if n == 0:
		return {"frames": 0, "mean_us": 0.0, "p50_us": 0, "p99_us": 0, "max_us": 0, "by_call_us": usec_by_call}
	var total := 0
	for v: int in values:
		total += v
	return {
		"frames": n,
		"mean_us": float(total) / n,
		"p50_us": values[int(n * 0.5)],
		"p99_us": values[min(n - 1, int(n * 0.99))],
		"max_us": values[n - 1],
		"by_call_us": usec_by_call,
	}


## Stop the runtime's threads after they forwarded every event; returns the final stats
## (also kept in final_stats). Called when the node leaves the tree (the game quits).
func shutdown() -> Dictionary:
	if _bridge != null:
		var t0 := Time.get_ticks_usec()
		final_stats = _parse(_bridge.stop())
		_account(t0, "stop")
		_bridge = null
	return final_stats


func _exit_tree() -> void:
	shutdown()
