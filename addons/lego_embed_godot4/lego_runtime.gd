extends Node
## Autoload "LegoRuntime": owns the native bridge, feeds the runtime with the engine's frame
## events and delivers finished decisions to LegoNPC nodes once per frame. The same API, signals
## and events as the Godot 3 addon, plus the GPU's own pass boundaries.
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

const Settings = preload("res://addons/lego_embed/lego_settings.gd")
const BRIDGE_CLASS = &"LegoBridge"
const BRIDGE_LIBRARY = "res://addons/lego_embed/native/build/liblego_bridge.so"
const FIRST = -1000000000
const LAST = 1000000000

var is_ready := false        ## the model is loaded and the runtime runs
var failure := ""            ## why the runtime cannot decide ("" while fine)
var ready_info := {}         ## what the bridge reported when the model was ready
var frames_drawn := 0        ## frame_post_draw signals seen since start
var bridge_calls := 0        ## calls into the bridge from the main thread
var bridge_usec_total := 0   ## main-thread microseconds spent in bridge calls
var frame_bridge_usec := PackedInt64Array()  ## bridge microseconds of each drawn frame
var usec_by_call := {}       ## main-thread microseconds per bridge method (start/stop included)
var gpu_frames_sent := 0     ## read-back GPU timestamp frames forwarded to the bridge

var final_stats := {}        ## stats() as they were when the runtime stopped
var engine_frames_at_start := 0  ## Engine.get_frames_drawn() when the bridge started

var _bridge: Object = null
var _rendering_device: RenderingDevice = null
var _last_gpu_frame := -1
var _pending := {}           # request_id -> WeakRef(LegoNPC)
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
	var t0 := Time.get_ticks_usec()
	var result := _parse(_bridge.start(Settings.bridge_config()))
	_account(t0, "start")
	if result.has("error"):
		_fail("the Python bridge did not start: %s" % result["error"])
		_bridge = null


func _fail(reason: String) -> void:
	failure = reason
	push_error("lego_embed: " + reason)
	runtime_failed.emit(reason)
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
			"ready":
				is_ready = true
				ready_info = result
				runtime_ready.emit(result)
			"load_failed":
				_fail("the NPC model did not load: %s" % result.get("reason", "?"))
			"error":
				push_error("lego_embed: " + str(result.get("reason", "")))
				runtime_error.emit(str(result.get("reason", "")))


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
		push_error("lego_embed: decision failed for %s: %s" % [result.get("npc_id", "?"), error])
	var ref: WeakRef = _pending.get(request_id)
	_pending.erase(request_id)
	var npc = ref.get_ref() if ref != null else null  # a LegoNPC
	if npc != null:
		npc._deliver(result)


func _deliver_failure(request_id: int, reason: String) -> void:
	var ref: WeakRef = _pending.get(request_id)
	_pending.erase(request_id)
	var npc = ref.get_ref() if ref != null else null  # a LegoNPC
	if npc != null:
		npc._deliver({"request_id": request_id, "error": reason})


## Called by LegoNPC.request_decision. Returns the request id, or -1 after scheduling a
## decision_failed on the NPC.
func submit(npc: Node, npc_id: String, state: Dictionary, actions: Array, deadline_ms: float) -> int:
	if _bridge == null or failure != "" or not is_ready:
		var reason := failure
		if reason == "":
			reason = "the NPC model is still loading; wait for LegoRuntime's runtime_ready signal" if _bridge != null else "the lego_embed bridge is not running"
		npc.call_deferred("_deliver", {"request_id": -1, "error": reason})
		return -1
	var t0 := Time.get_ticks_usec()
	var result: Dictionary = _bridge.request(npc_id, state, actions, deadline_ms)
	_account(t0, "request")
	if result.has("error"):
		push_error("lego_embed: decision failed for %s: %s" % [npc_id, result["error"]])
		npc.call_deferred("_deliver", {"request_id": -1, "error": result["error"]})
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
