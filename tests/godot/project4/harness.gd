extends Node3D
## Engine-test harness (Godot 4): drives LegoNPC nodes through one scenario and writes what
## happened as JSON to $LEGO_TEST_OUT, then quits. The same scenarios as the Godot 3 harness
## (tests/godot/project), plus the GPU's timestamps:
##   decisions      three NPCs decide until >= WANT_DECISIONS decisions arrived; in between, a
##                  faulty NPC sends malformed states and bad action lists (each must come back
##                  as decision_failed while the game and the other NPCs keep going). Records the
##                  engine's own viewport GPU time per frame.
##   gpu_passes     GPU_FRAMES frames after the model is ready (run with --gpu-profile, so the
##                  renderer captures a timestamp per pass).
##   missing_model  the model folder does not exist ($LEGO_EMBED_MODEL): one clear failure.
##   quit_early     quits in its first _process, right after the runtime started loading
##                  the model (before any frame is drawn: a load can finish within a few frames).
##   stall          three NPCs decide (Enemy0 with a fallback action); at Enemy0's first decision
##                  after STALL_AFTER in all (its next request just sent), the same frame's
##                  _process busy-waits STALL_MS (the main thread stalls, as a hitch would),
##                  then the game goes on until WANT_AFTER_STALL decisions asked after the
##                  stall arrived.
##   overload       three NPCs with fallback actions ask at 6000 actions per minute (10 ms
##                  deadlines), far more than the model sustains, until LegoRuntime emitted
##                  `overloaded` and WANT_DECISIONS answers arrived.
##   village        not the combat demo: a lamp keeper with its own static prompt, template and
##                  actions streams lines (request_line), picks actions (request_action) and does
##                  both at once (request_action_and_line); a missing field, a broken template,
##                  unused fields and an untrained combat persona are reported; LINES lines.

const LegoNPC = preload("res://addons/lego_embed/lego_npc.gd")
const WANT_DECISIONS = 12
const GPU_FRAMES = 90
const STALL_AFTER = 3
const STALL_MS = 2000
const WANT_AFTER_STALL = 6
const PERSONAS = ["brute", "duelist", "coward"]
const LINES = 3
const KEEPER_ACTIONS: Array[String] = ["light the lamp", "wave", "close the door"]
const ENEMY_ACTIONS = ["idle", "light_attack", "heavy_windup", "heavy_attack", "block", "dodge", "heal", "shoot", "approach", "retreat"]

var scenario := OS.get_environment("LEGO_TEST_SCENARIO")
var out_path := OS.get_environment("LEGO_TEST_OUT")
var timeout_s := 90.0
var elapsed_s := 0.0
var rng := RandomNumberGenerator.new()
var npcs: Array[Node] = []
var faulty: Node
var decisions := []
var failures := []
var faults_sent := 0
var decisions_after_faults := 0
var frames_at_faults := -1
var frames_at_ready := -1
var failed_runtime := ""
var done := false
var runtime: Node
var measured_gpu_ms := {}   # frames drawn -> the engine's viewport_get_measured_render_time_gpu
var requests_sent := 0
var issued_usec := {}        # NPC name -> when its request in flight was sent
var errors := []             # runtime_error reasons
var health_changes := []     # every health_changed, in order
var stall_pending := false
var stall_begin_usec := -1
var stall_end_usec := -1
var overload_signals := []   # every `overloaded` signal: active, info, frame
var keeper: Node
var broken: Node
var guard: Node
var lines := []              # village: {"tokens": [...], "line": ..., "info": ...}
var tokens := {}             # request id -> streamed pieces
var keeper_actions := []
var village_sent := false


func _ready() -> void:
	rng.seed = 7
	if OS.has_environment("LEGO_TEST_TIMEOUT_S"):
		timeout_s = float(OS.get_environment("LEGO_TEST_TIMEOUT_S"))
	_build_scene()
	runtime = get_node("/root/LegoRuntime")
	runtime.runtime_ready.connect(_on_runtime_ready)
	runtime.runtime_failed.connect(_on_runtime_failed)
	runtime.runtime_error.connect(_on_runtime_error)
	runtime.health_changed.connect(_on_health_changed)
	runtime.overloaded.connect(_on_overloaded)
	RenderingServer.frame_post_draw.connect(_on_frame_post_draw)
	for i in PERSONAS.size():
		var npc := LegoNPC.new()
		npc.name = "Enemy%d" % i
		npc.persona = PERSONAS[i]
		npc.actions_per_minute = 200.0
		npc.decision_made.connect(_on_decision.bind(npc))
		npc.decision_failed.connect(_on_failure.bind(npc))
		if scenario == "overload":
			npc.actions_per_minute = 6000.0
			npc.fallback_action = "block"
		elif scenario == "stall" and i == 0:
			npc.fallback_action = "block"
		add_child(npc)
		npcs.append(npc)
	faulty = LegoNPC.new()
	faulty.name = "Faulty"
	faulty.decision_failed.connect(_on_failure.bind(faulty))
	faulty.decision_made.connect(_on_decision.bind(faulty))
	add_child(faulty)
	if scenario == "village":
		_make_village()
	if runtime.failure != "":
		_on_runtime_failed(runtime.failure)


## Something for the 3D renderer to draw, so its passes run.
func _build_scene() -> void:
	var camera := Camera3D.new()
	camera.position = Vector3(0, 1.5, 4)
	add_child(camera)
	var box := MeshInstance3D.new()
	box.mesh = BoxMesh.new()
	add_child(box)
	var sun := DirectionalLight3D.new()
	sun.rotation_degrees = Vector3(-50, -30, 0)
	add_child(sun)


func _make_village() -> void:
	keeper = LegoNPC.new()
	keeper.name = "Keeper"
	keeper.static_prompt = "You keep the lamps of the harbour. "
	keeper.prompt_template = "A {visitor} asks about the {thing}. You"
	keeper.allowed_actions = KEEPER_ACTIONS
	keeper.max_line_tokens = 10
	keeper.actions_per_minute = 60.0
	keeper.supersede = false  # its requests are sent at once and every one is wanted
	keeper.line_token.connect(_on_line_token)
	keeper.line_finished.connect(_on_line_finished)
	keeper.decision_made.connect(_on_keeper_action)
	keeper.decision_failed.connect(_on_failure.bind(keeper))
	add_child(keeper)
	broken = LegoNPC.new()
	broken.name = "Broken"
	broken.decision_failed.connect(_on_failure.bind(broken))
	add_child(broken)
	broken.prompt_template = "A {visitor asks"  # checked when set: decision_failed
	guard = LegoNPC.new()
	guard.name = "Guard"
	guard.persona = "guard"  # the bundled combat model knows no guard: one warning
	guard.supersede = false
	guard.decision_made.connect(_on_guard_action)
	guard.decision_failed.connect(_on_failure.bind(guard))
	add_child(guard)


func _village_requests() -> void:
	village_sent = true
	for i in LINES:
		keeper.request_line({"visitor": ["sailor", "child", "merchant"][i], "thing": "light"})
	keeper.request_action({"visitor": "sailor", "thing": "storm", "mood": "calm"}, [])
	keeper.request_action({"visitor": "sailor", "thing": "storm", "mood": "calm"}, [])
	keeper.request_action_and_line({"visitor": "fisher", "thing": "fog"}, ["wave", "close the door"])
	keeper.request_line({"visitor": "ghost"})  # no 'thing': decision_failed naming it
	var state := random_state()
	state["stamina"] = 3  # a field the combat task does not read
	guard.request_action(state)
	guard.request_action(state)


func _on_line_token(text: String, info: Dictionary) -> void:
	var id := int(info["request_id"])
	if not tokens.has(id):
		tokens[id] = []
	tokens[id].append({"text": text, "index": info["index"], "deadline_ms": info["deadline_ms"],
		"latency_ms": info["latency_ms"], "deadline_met": info["deadline_met"]})


func _on_line_finished(line: String, info: Dictionary) -> void:
	lines.append({"line": line, "info": info, "tokens": tokens.get(int(info["request_id"]), [])})


func _on_keeper_action(action: String, info: Dictionary) -> void:
	keeper_actions.append({"action": action, "info": info})


func _on_guard_action(action: String, info: Dictionary) -> void:
	decisions.append({"npc": "Guard", "persona": "guard", "action": action,
		"allowed": guard.allowed_actions, "info": info, "frame": runtime.frames_drawn})


func random_state() -> Dictionary:
	return {
		"hp": rng.randi_range(1, 100),
		"enemy_hp": rng.randi_range(1, 100),
		"distance": snappedf(rng.randf_range(0.0, 20.0), 0.5),
		"enemy_last_action": ENEMY_ACTIONS[rng.randi_range(0, ENEMY_ACTIONS.size() - 1)],
		"cooldowns": {"dodge": rng.randi_range(0, 3), "heal": 0, "heavy": rng.randi_range(0, 3)},
		"allies": rng.randi_range(0, 3),
	}


func _ask(npc: Node) -> void:
	requests_sent += 1
	issued_usec[str(npc.name)] = Time.get_ticks_usec()
	npc.request_decision(random_state())


func _on_runtime_ready(_info: Dictionary) -> void:
	frames_at_ready = runtime.frames_drawn
	if scenario == "village":
		_village_requests()
		return
	if scenario == "gpu_passes":
		return
	for npc in npcs:
		_ask(npc)


func _on_runtime_error(reason: String) -> void:
	errors.append(reason)


func _on_health_changed(health: Dictionary) -> void:
	health_changes.append(health.duplicate())


func _on_overloaded(active: bool, info: Dictionary) -> void:
	overload_signals.append({"active": active, "info": info.duplicate(), "frame": runtime.frames_drawn})


func _on_runtime_failed(reason: String) -> void:
	failed_runtime = reason
	if scenario == "missing_model":
		npcs[0].request_decision(random_state())


func _on_decision(action: String, info: Dictionary, npc: Node) -> void:
	decisions.append({"npc": str(npc.name), "persona": npc.persona, "action": action,
		"allowed": npc.allowed_actions, "info": info, "frame": runtime.frames_drawn,
		"usec": Time.get_ticks_usec(), "issued_usec": issued_usec.get(str(npc.name), -1)})
	if faults_sent > 0:
		decisions_after_faults += 1
	if scenario == "decisions" and decisions.size() == 3 and faults_sent == 0:
		_send_faults()
	if not done and npc != faulty:
		_ask(npc)
	if scenario == "stall" and npc.name == "Enemy0" and decisions.size() >= STALL_AFTER and stall_begin_usec < 0:
		stall_pending = true  # Enemy0's request just sent is still to run when the stall begins


func _send_faults() -> void:
	frames_at_faults = runtime.frames_drawn
	runtime._event("frame_done", "")  # no such event kind: the C bridge refuses and counts it
	var missing_hp := random_state()
	missing_hp.erase("hp")
	var nan_distance := random_state()
	nan_distance["distance"] = NAN
	var object_inside := random_state()
	object_inside["allies"] = self
	var wrong_type := random_state()
	wrong_type["hp"] = "full"
	for state: Dictionary in [missing_hp, nan_distance, object_inside, wrong_type]:
		faulty.request_decision(state)
		faults_sent += 1
	# allowed_actions is an Array[String] in Godot 4, so GDScript itself refuses [1, 2] there;
	# a request's own action list is a plain Array and reaches the runtime, which refuses it.
	faulty.request_action(random_state(), [1, 2])
	faults_sent += 1
	faulty.allowed_actions.clear()
	faulty.request_decision(random_state())
	faults_sent += 1


func _on_failure(reason: String, npc: Node) -> void:
	failures.append({"npc": str(npc.name), "reason": reason, "frame": runtime.frames_drawn})


func _on_frame_post_draw() -> void:
	var rid := get_viewport().get_viewport_rid()
	measured_gpu_ms[str(Engine.get_frames_drawn())] = RenderingServer.viewport_get_measured_render_time_gpu(rid)


func _process(delta: float) -> void:
	elapsed_s += delta
	if done:
		return
	if stall_pending:  # the main thread stalls inside the process pass
		stall_pending = false
		stall_begin_usec = Time.get_ticks_usec()
		while Time.get_ticks_usec() - stall_begin_usec < STALL_MS * 1000:
			pass
		stall_end_usec = Time.get_ticks_usec()
	var finished := false
	if scenario == "stall":
		finished = stall_end_usec > 0 and _decisions_asked_after(stall_end_usec) >= WANT_AFTER_STALL
	elif scenario == "missing_model":
		finished = failed_runtime != "" and failures.size() >= 1
	elif scenario == "overload":
		finished = overload_signals.size() >= 1 and decisions.size() >= WANT_DECISIONS
	elif scenario == "quit_early":
		finished = true
	elif scenario == "gpu_passes":
		finished = frames_at_ready >= 0 and runtime.frames_drawn >= frames_at_ready + GPU_FRAMES
	elif scenario == "village":
		finished = village_sent and lines.size() >= LINES + 1 and keeper_actions.size() >= 3 and decisions.size() >= 2 and failures.size() >= 2
	else:
		finished = decisions.size() >= WANT_DECISIONS and decisions_after_faults >= 3 and failures.size() >= faults_sent and faults_sent > 0
	if finished or elapsed_s > timeout_s:
		_finish(not finished)


func _decisions_asked_after(usec: int) -> int:
	var n := 0
	for decision: Dictionary in decisions:
		if decision["issued_usec"] > usec:
			n += 1
	return n


func _finish(timed_out: bool) -> void:
	done = true
	var frames_drawn: int = runtime.frames_drawn
	var engine_frames: int = Engine.get_frames_drawn() - runtime.engine_frames_at_start
	var final_stats: Dictionary = runtime.shutdown()
	var rendering_device := RenderingServer.get_rendering_device()
	var report := {
		"scenario": scenario,
		"timed_out": timed_out,
		"elapsed_s": elapsed_s,
		"engine_version": Engine.get_version_info()["string"],
		"rendering_driver": RenderingServer.get_current_rendering_driver_name(),
		"rendering_method": RenderingServer.get_current_rendering_method(),
		"adapter": RenderingServer.get_video_adapter_name(),
		"frame_delay": rendering_device.get_frame_delay() if rendering_device != null else -1,
		"ready_info": runtime.ready_info,
		"runtime_failure": failed_runtime,
		"decisions": decisions,
		"failures": failures,
		"faults_sent": faults_sent,
		"frames_at_faults": frames_at_faults,
		"decisions_after_faults": decisions_after_faults,
		"frames_drawn": frames_drawn,
		"engine_frames": engine_frames,
		"final_stats": final_stats,
		"bridge_cost": runtime.bridge_cost(),
		"bridge_calls": runtime.bridge_calls,
		"gpu_frames_sent": runtime.gpu_frames_sent,
		"measured_gpu_ms": measured_gpu_ms,
		"fps": Engine.get_frames_per_second(),
		"requests_sent": requests_sent,
		"errors": errors,
		"health_changes": health_changes,
		"final_health": runtime.health,
		"stall_begin_usec": stall_begin_usec,
		"stall_end_usec": stall_end_usec,
		"overload_signals": overload_signals,
		"final_overloaded": runtime.is_overloaded,
		"lines": lines,
		"keeper_actions": keeper_actions,
		"keeper_template_fields": keeper.template_fields if keeper != null else [],
		"logged": runtime.logged,
		"frame_budget_ms": runtime.frame_budget_ms,
	}
	var file := FileAccess.open(out_path, FileAccess.WRITE)
	file.store_string(JSON.stringify(report))
	file.close()
	get_tree().quit()
