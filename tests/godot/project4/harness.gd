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
##   quit_early     quits after QUIT_EARLY_FRAMES frames, while the model is still loading.

const LegoNPC = preload("res://addons/lego_embed/lego_npc.gd")
const WANT_DECISIONS = 12
const GPU_FRAMES = 90
const QUIT_EARLY_FRAMES = 30
const PERSONAS = ["brute", "duelist", "coward"]
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
var measured_gpu_ms := []   # the engine's viewport_get_measured_render_time_gpu, per frame


func _ready() -> void:
	rng.seed = 7
	if OS.has_environment("LEGO_TEST_TIMEOUT_S"):
		timeout_s = float(OS.get_environment("LEGO_TEST_TIMEOUT_S"))
	_build_scene()
	runtime = get_node("/root/LegoRuntime")
	runtime.runtime_ready.connect(_on_runtime_ready)
	runtime.runtime_failed.connect(_on_runtime_failed)
	RenderingServer.frame_post_draw.connect(_on_frame_post_draw)
	for i in PERSONAS.size():
		var npc := LegoNPC.new()
		npc.name = "Enemy%d" % i
		npc.persona = PERSONAS[i]
		npc.actions_per_minute = 200.0
		npc.decision_made.connect(_on_decision.bind(npc))
		npc.decision_failed.connect(_on_failure.bind(npc))
		add_child(npc)
		npcs.append(npc)
	faulty = LegoNPC.new()
	faulty.name = "Faulty"
	faulty.decision_failed.connect(_on_failure.bind(faulty))
	faulty.decision_made.connect(_on_decision.bind(faulty))
	add_child(faulty)
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


func random_state() -> Dictionary:
	return {
		"hp": rng.randi_range(1, 100),
		"enemy_hp": rng.randi_range(1, 100),
		"distance": snappedf(rng.randf_range(0.0, 20.0), 0.5),
		"enemy_last_action": ENEMY_ACTIONS[rng.randi_range(0, ENEMY_ACTIONS.size() - 1)],
		"cooldowns": {"dodge": rng.randi_range(0, 3), "heal": 0, "heavy": rng.randi_range(0, 3)},
		"allies": rng.randi_range(0, 3),
	}


func _on_runtime_ready(_info: Dictionary) -> void:
	frames_at_ready = runtime.frames_drawn
	if scenario == "decisions":
		for npc in npcs:
			npc.request_decision(random_state())


func _on_runtime_failed(reason: String) -> void:
	failed_runtime = reason
	if scenario == "missing_model":
		npcs[0].request_decision(random_state())


func _on_decision(action: String, info: Dictionary, npc: Node) -> void:
	decisions.append({"npc": str(npc.name), "persona": npc.persona, "action": action,
		"allowed": npc.allowed_actions, "info": info, "frame": runtime.frames_drawn})
	if faults_sent > 0:
		decisions_after_faults += 1
	if decisions.size() == 3 and faults_sent == 0:
		_send_faults()
	if not done:
		npc.request_decision(random_state())


func _send_faults() -> void:
	frames_at_faults = runtime.frames_drawn
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
	# a list of the wrong type can still reach the runtime's submit(), which LegoNPC calls.
	var full_state := random_state()
	full_state["persona"] = "brute"
	runtime.submit(faulty, faulty.get_npc_id(), full_state, [1, 2], faulty.get_deadline_ms())
	faults_sent += 1
	faulty.allowed_actions.clear()
	faulty.request_decision(random_state())
	faults_sent += 1


func _on_failure(reason: String, npc: Node) -> void:
	failures.append({"npc": str(npc.name), "reason": reason, "frame": runtime.frames_drawn})


func _on_frame_post_draw() -> void:
	var rid := get_viewport().get_viewport_rid()
	measured_gpu_ms.append(RenderingServer.viewport_get_measured_render_time_gpu(rid))


func _process(delta: float) -> void:
	elapsed_s += delta
	if done:
		return
	var finished := false
	if scenario == "missing_model":
		finished = failed_runtime != "" and failures.size() >= 1
	elif scenario == "quit_early":
		finished = runtime.frames_drawn >= QUIT_EARLY_FRAMES
	elif scenario == "gpu_passes":
		finished = frames_at_ready >= 0 and runtime.frames_drawn >= frames_at_ready + GPU_FRAMES
	else:
		finished = decisions.size() >= WANT_DECISIONS and decisions_after_faults >= 3 and failures.size() >= faults_sent and faults_sent > 0
	if finished or elapsed_s > timeout_s:
		_finish(not finished)


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
	}
	var file := FileAccess.open(out_path, FileAccess.WRITE)
	file.store_string(JSON.stringify(report))
	file.close()
	get_tree().quit()
