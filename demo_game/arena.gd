extends Spatial
# The combat demo: a 3D arena, a player (keyboard, or a bot when LEGO_DEMO_BOT=1) and three
# enemies with different personas whose every move comes from the NPC LLM through LegoNPC at
# 200 actions per minute; they also speak persona barks, streamed token by token into speech
# bubbles. A HUD shows FPS, a frame-time graph, LLM latency p50/p99, the skip level, decisions
# per minute, line figures and the NPC worker's health (running, restarted after an internal
# error, or failed); each enemy shows its current action above its head. When the work does not
# fit, enemies act on a fallback at the deadline, and the ModelBudget moves the farthest enemies
# to rules while the runtime reports itself overloaded.
#
# Environment: LEGO_DEMO_SECONDS (stop after that long and write the report; 0 = run until the
# window closes), LEGO_DEMO_REPORT (report.json path), LEGO_DEMO_SCREENSHOT (png path, taken
# near the end), LEGO_EMBED_ENABLED=0 (LLM off: enemies use rules, no Python starts),
# LEGO_DEMO_FPS (frame cap; the project's is 30, 0 = uncapped).

const Player = preload("res://player.gd")
const Enemy = preload("res://enemy.gd")
const FrameGraph = preload("res://frame_graph.gd")
const ModelBudget = preload("res://model_budget.gd")
const ENEMY_SPECS = [
	{"persona": "brute", "color": Color(0.9, 0.2, 0.15), "at": Vector3(-6, 0, -6)},
	{"persona": "duelist", "color": Color(1.0, 0.65, 0.1), "at": Vector3(6, 0, -6)},
	{"persona": "coward", "color": Color(0.7, 0.3, 0.9), "at": Vector3(0, 0, -9)},
]
const RECENT_DECISIONS = 200
const BUBBLE_WIDTH = 200.0

var player: Spatial
var enemies := []
var camera: Camera
var runtime: Node
var llm_enabled := true
var duration_s := 0.0
var report_path := ""
var screenshot_path := ""
var elapsed_s := 0.0
var started := false
var frame_usec := 0
var frame_times_ms := PoolRealArray()
var latencies_ms := PoolRealArray()
var decision_times_s := []
var decisions := 0
var invalid_actions := 0
var deadline_met := 0
var failures := 0
var failure_reasons := {}
var skip_levels := {}
var current_skip_level := 0
var screenshot_taken := false
var finished := false

var lines_spoken := 0
var first_token_ms := PoolRealArray()
var line_tokens_per_s := PoolRealArray()
var lines_late_first_token := 0
var late_line_tokens := 0
var line_samples := []
var fallbacks := 0             # actions the rules supplied at the deadline (the model was late)
var scripted_actions := 0      # actions of enemies the ModelBudget had off the model
var budget: Reference          # the ModelBudget (idle with the LLM off)
var cpu_at_start := []         # /proc/stat's [total, steal] when the timed part started

var hud_label: Label
var hud_status: Label
var hud_health: Label
var health_changes := []
var graph: Control
var action_labels := {}
var bubbles := {}


func _ready() -> void:
	llm_enabled = not (OS.get_environment("LEGO_EMBED_ENABLED") in ["0", "false", "off", "no"])
	duration_s = float(OS.get_environment("LEGO_DEMO_SECONDS")) if OS.has_environment("LEGO_DEMO_SECONDS") else 0.0
	report_path = OS.get_environment("LEGO_DEMO_REPORT")
	screenshot_path = OS.get_environment("LEGO_DEMO_SCREENSHOT")
	if OS.has_environment("LEGO_DEMO_FPS"):
		Engine.target_fps = int(OS.get_environment("LEGO_DEMO_FPS"))  # 0 = uncapped
	runtime = get_node("/root/LegoRuntime")
	_build_world()
	_build_hud()
	player = Player.new()
	player.name = "Player"
	player.arena = self
	player.use_bot = OS.get_environment("LEGO_DEMO_BOT") == "1"
	player.translation = Vector3(0, 0, 4)
	add_child(player)
	for spec in ENEMY_SPECS:
		var enemy = Enemy.new()
		enemy.name = spec["persona"].capitalize()
		enemy.persona = spec["persona"]
		enemy.color = spec["color"]
		enemy.translation = spec["at"]
		enemy.arena = self
		enemy.llm_enabled = llm_enabled
		enemy.active = not llm_enabled  # with the LLM, enemies start once the model is ready
		enemy.connect("acted", self, "_on_enemy_acted")
		enemy.connect("failed", self, "_on_enemy_failed")
		enemy.connect("spoke", self, "_on_enemy_spoke")
		add_child(enemy)
		enemies.append(enemy)
		var label := Label.new()
		label.align = Label.ALIGN_CENTER
		label.add_color_override("font_color", spec["color"].lightened(0.4))
		label.add_color_override("font_color_shadow", Color.black)
		$HUD.add_child(label)
		action_labels[enemy] = label
		bubbles[enemy] = _speech_bubble(spec["color"])
	runtime.connect("runtime_ready", self, "_on_runtime_ready")
	runtime.connect("runtime_failed", self, "_on_runtime_failed")
	runtime.connect("health_changed", self, "_on_health_changed")
	budget = ModelBudget.new(enemies)
	runtime.connect("overloaded", budget, "on_overloaded")
	VisualServer.connect("frame_post_draw", self, "_on_frame_post_draw")
	if not llm_enabled:
		_start_timing()
	if llm_enabled and runtime.failure != "":
		_on_runtime_failed(runtime.failure)


func _build_world() -> void:
	var floor_mesh := MeshInstance.new()
	var plane := PlaneMesh.new()
	plane.size = Vector2(24, 24)
	floor_mesh.mesh = plane
	var floor_material := SpatialMaterial.new()
	floor_material.albedo_color = Color(0.32, 0.3, 0.27)
	floor_mesh.material_override = floor_material
	add_child(floor_mesh)
	var wall_material := SpatialMaterial.new()
	wall_material.albedo_color = Color(0.45, 0.42, 0.38)
	for wall in [[Vector3(0, 1, -12.5), Vector3(25, 2, 1)], [Vector3(0, 1, 12.5), Vector3(25, 2, 1)],
			[Vector3(-12.5, 1, 0), Vector3(1, 2, 25)], [Vector3(12.5, 1, 0), Vector3(1, 2, 25)]]:
		var box := MeshInstance.new()
		var cube := CubeMesh.new()
		cube.size = wall[1]
		box.mesh = cube
		box.translation = wall[0]
		box.material_override = wall_material
		add_child(box)
	for pillar in [Vector3(-8, 1.5, -7), Vector3(8, 1.5, -7), Vector3(-8, 1.5, 6), Vector3(8, 1.5, 6)]:
		var column := MeshInstance.new()
		var cylinder := CylinderMesh.new()
		cylinder.height = 3.0
		column.mesh = cylinder
		column.translation = pillar
		column.material_override = wall_material
		add_child(column)
	var sun := DirectionalLight.new()
	sun.rotation_degrees = Vector3(-55, -30, 0)
	sun.light_energy = 1.1
	add_child(sun)
	var environment := Environment.new()
	environment.background_mode = Environment.BG_COLOR
	environment.background_color = Color(0.08, 0.09, 0.12)
	environment.ambient_light_color = Color(0.55, 0.55, 0.6)
	environment.ambient_light_energy = 0.6
	var world_environment := WorldEnvironment.new()
	world_environment.environment = environment
	add_child(world_environment)
	camera = Camera.new()
	camera.translation = Vector3(0, 15, 13.5)
	camera.rotation_degrees = Vector3(-52, 0, 0)
	camera.current = true
	add_child(camera)


func _build_hud() -> void:
	var screen := get_viewport().size
	var hud := CanvasLayer.new()
	hud.name = "HUD"
	add_child(hud)
	var panel := ColorRect.new()
	panel.color = Color(0, 0, 0, 0.55)
	panel.rect_position = Vector2(8, 8)
	panel.rect_size = Vector2(330, 118)
	hud.add_child(panel)
	hud_label = Label.new()
	hud_label.rect_position = Vector2(16, 12)
	hud.add_child(hud_label)
	hud_status = Label.new()
	hud_status.rect_position = Vector2(16, screen.y - 30)
	hud_status.add_color_override("font_color", Color(1, 0.85, 0.4))
	hud.add_child(hud_status)
	hud_health = Label.new()
	hud_health.rect_position = Vector2(16, 130)
	hud.add_child(hud_health)
	_show_health(runtime.health if llm_enabled else {"state": "off", "restarts": 0, "last_error": null})
	graph = FrameGraph.new()
	graph.rect_position = Vector2(screen.x - 290, screen.y - 126)
	graph.rect_size = Vector2(280, 90)
	hud.add_child(graph)
	var graph_title := Label.new()
	graph_title.text = "frame time (ms, 0-50; line = %.1f budget)" % (1000.0 / (Engine.target_fps if Engine.target_fps > 0 else 60))
	graph_title.rect_position = Vector2(screen.x - 286, screen.y - 34)
	hud.add_child(graph_title)


func _speech_bubble(color: Color) -> Label:
	var bubble := Label.new()
	bubble.align = Label.ALIGN_CENTER
	bubble.autowrap = true
	bubble.rect_size = Vector2(BUBBLE_WIDTH, 0)
	bubble.add_color_override("font_color", Color(0.08, 0.08, 0.1))
	var style := StyleBoxFlat.new()
	style.bg_color = Color(1, 1, 0.96, 0.92)
	style.border_color = color
	style.set_border_width_all(2)
	style.set_corner_radius_all(8)
	style.content_margin_left = 8
	style.content_margin_right = 8
	style.content_margin_top = 4
	style.content_margin_bottom = 4
	bubble.add_stylebox_override("normal", style)
	bubble.visible = false
	$HUD.add_child(bubble)
	return bubble


func _on_runtime_ready(info: Dictionary) -> void:
	hud_status.text = "NPC model ready: %s (%d layers)" % [str(info.get("model", "?")).get_file(), info.get("num_layers", 0)]
	_start_timing()
	for enemy in enemies:
		enemy.active = true


func _start_timing() -> void:
	started = true
	cpu_at_start = _cpu_times()


func _on_runtime_failed(reason: String) -> void:
	if llm_enabled:
		hud_status.text = "LLM unavailable: " + reason
		failure_reasons[reason] = failure_reasons.get(reason, 0) + 1
		_start_timing()  # the timed run (and its report) go on, showing the failure


func _on_health_changed(health: Dictionary) -> void:
	health_changes.append({"at_s": elapsed_s, "health": health.duplicate()})
	if llm_enabled:
		_show_health(health)


# The NPC worker's health line: green while it runs, orange once it had to restart (requests in
# flight then failed), red when it stopped for good.
func _show_health(health: Dictionary) -> void:
	var state: String = health.get("state", "")
	var restarts: int = int(health.get("restarts", 0))
	var color := Color(0.5, 0.9, 0.5)
	var text := "NPC worker: " + state.replace("_", " ")
	if state == "failed":
		color = Color(1.0, 0.3, 0.25)
		text = "NPC worker: FAILED (%s)" % str(health.get("last_error", ""))
	elif restarts > 0:
		color = Color(1.0, 0.6, 0.2)
		text = "NPC worker: %s, restarted %d x (last: %s)" % [state, restarts, str(health.get("last_error", ""))]
	hud_health.text = text
	hud_health.add_color_override("font_color", color)


func _on_enemy_acted(enemy: Node, action: String, info: Dictionary) -> void:
	if not llm_enabled:
		return
	if info.get("scripted", false):
		scripted_actions += 1
		return
	decisions += 1
	decision_times_s.append(elapsed_s)
	if info.get("fallback", false):
		fallbacks += 1
	if not (action in enemy.npc.allowed_actions):
		invalid_actions += 1
	latencies_ms.append(float(info.get("latency_ms", 0.0)))
	if info.get("deadline_met", false):
		deadline_met += 1
	current_skip_level = int(info.get("skip_level", 0))
	var key := str(current_skip_level)
	skip_levels[key] = skip_levels.get(key, 0) + 1


func _on_enemy_spoke(enemy: Node, line: String, info: Dictionary) -> void:
	if not started or finished:
		return
	lines_spoken += 1
	var first = info.get("first_token_ms")
	if first != null:
		first_token_ms.append(float(first))
		if float(first) > float(info.get("deadline_ms", 0.0)):
			lines_late_first_token += 1
	else:
		lines_late_first_token += 1
	if info.get("tokens_per_s", 0.0) > 0.0:
		line_tokens_per_s.append(info["tokens_per_s"])
	late_line_tokens += int(info.get("late_tokens", 0))
	if line_samples.size() < 12:
		line_samples.append({"persona": enemy.persona, "action": info.get("action"), "line": line})


func _on_enemy_failed(_enemy: Node, reason: String) -> void:
	failures += 1
	failure_reasons[reason] = failure_reasons.get(reason, 0) + 1


func nearest_enemy(from: Vector3) -> Spatial:
	var best: Spatial = null
	for enemy in enemies:
		if best == null or enemy.translation.distance_to(from) < best.translation.distance_to(from):
			best = enemy
	return best


func _on_frame_post_draw() -> void:
	var now := OS.get_ticks_usec()
	if frame_usec > 0:
		var ms := (now - frame_usec) / 1000.0
		graph.push(ms)
		if started and not finished:
			frame_times_ms.append(ms)
	frame_usec = now


static func percentile(values: Array, q: float) -> float:
	if values.empty():
		return 0.0
	var sorted := values.duplicate()
	sorted.sort()
	return float(sorted[min(sorted.size() - 1, int(floor(q * sorted.size())))])


func _process(delta: float) -> void:
	if started:
		elapsed_s += delta
		if llm_enabled and not finished:
			budget.update(delta, player.translation)
	_update_hud()
	if duration_s > 0.0 and not finished:
		if not screenshot_taken and elapsed_s >= duration_s - 1.0:
			_take_screenshot()
		if elapsed_s >= duration_s:
			_finish()


func _update_hud() -> void:
	var recent := Array(latencies_ms)
	if recent.size() > RECENT_DECISIONS:
		recent = recent.slice(recent.size() - RECENT_DECISIONS, recent.size() - 1)
	var per_minute := 0
	for t in decision_times_s:
		if t >= elapsed_s - 60.0:
			per_minute += 1
	var window_s: float = min(max(elapsed_s, 1.0), 60.0)
	hud_label.text = "FPS %d    LLM %s\nLLM latency p50 %.0f ms   p99 %.0f ms\nskip level %d\ndecisions/min %.0f   (3 NPCs x 200 APM)\ndeadline met %d / %d   fallbacks %d   failed %d\nmodel NPCs %d / %d%s   rule-driven actions %d\nlines %d   first token p50 %.0f ms\nplayer HP %d   %s" % [
		Engine.get_frames_per_second(), "on" if llm_enabled else "OFF (rules)",
		percentile(recent, 0.5), percentile(recent, 0.99), current_skip_level,
		per_minute * 60.0 / window_s, deadline_met, decisions, fallbacks, failures,
		budget.on_model, enemies.size(), "  (overloaded)" if runtime.is_overloaded else "", scripted_actions,
		lines_spoken, percentile(Array(first_token_ms), 0.5),
		int(player.hp), "bot" if player.use_bot else "keyboard: WASD J K L H"]
	var placed := []
	for enemy in enemies:
		var label: Label = action_labels[enemy]
		var head: Vector3 = enemy.global_transform.origin + Vector3(0, 2.8, 0)
		var at := camera.unproject_position(head)
		label.text = "%s: %s\nHP %d" % [enemy.persona, enemy.action, int(enemy.hp)]
		var rect := Rect2(at - Vector2(label.rect_size.x / 2.0, label.rect_size.y), label.rect_size)
		for other in placed:  # stack labels that would overlap
			if rect.intersects(other):
				rect.position.y = other.position.y - rect.size.y - 2.0
		rect.position.y = max(rect.position.y, 4.0)
		placed.append(rect)
		label.rect_position = rect.position
		var bubble: Label = bubbles[enemy]
		bubble.visible = enemy.bubble_text != ""
		if bubble.visible:
			bubble.text = enemy.bubble_text
			var lines: int = max(1, bubble.get_line_count())
			var size := Vector2(BUBBLE_WIDTH, lines * (bubble.get_line_height() + 3) + 10)
			bubble.rect_size = size
			var spot := Rect2(Vector2(rect.position.x + rect.size.x / 2.0 - size.x / 2.0, rect.position.y - size.y - 4.0), size)
			for other in placed:
				if spot.intersects(other):
					spot.position.y = other.position.y - spot.size.y - 4.0
			if spot.position.y < 4.0:  # no room above the enemy: below its label instead
				spot.position.y = rect.end.y + 4.0
				for other in placed:
					if spot.intersects(other):
						spot.position.y = other.end.y + 4.0
			var screen := get_viewport().size
			spot.position.x = clamp(spot.position.x, 4.0, screen.x - size.x - 4.0)
			placed.append(spot)
			bubble.rect_position = spot.position


func _take_screenshot() -> void:
	screenshot_taken = true
	if screenshot_path == "":
		return
	var image := get_viewport().get_texture().get_data()
	image.flip_y()
	Directory.new().make_dir_recursive(screenshot_path.get_base_dir())
	image.save_png(screenshot_path)


func report() -> Dictionary:
	var frames := Array(frame_times_ms)
	var fps := []
	for ms in frames:
		fps.append(1000.0 / max(ms, 0.001))
	var latencies := Array(latencies_ms)
	var slo_total := decisions + failures
	var budget_ms := 1000.0 / (Engine.target_fps if Engine.target_fps > 0 else 60)
	return {
		"llm": llm_enabled,
		"duration_s": elapsed_s,
		"frames": frames.size(),
		"fps_mean": frames.size() / max(elapsed_s, 0.001),
		"fps_p50": percentile(fps, 0.5),
		"fps_p1": percentile(fps, 0.01),
		"p50_frame_ms": percentile(frames, 0.5),
		"p99_frame_ms": percentile(frames, 0.99),
		"frame_budget_ms": budget_ms,
		"frames_over_1_5x_budget": _count_over(frames, budget_ms * 1.5),
		"decisions": decisions,
		"decision_failures": failures,
		"failure_reasons": failure_reasons,
		"invalid_actions": invalid_actions,
		"p50_action_ms": percentile(latencies, 0.5),
		"p99_action_ms": percentile(latencies, 0.99),
		"slo_ms": 60000.0 / 200.0,
		"slo_attainment": float(deadline_met) / slo_total if slo_total > 0 else 0.0,
		"skip_levels": skip_levels,
		"npcs": enemies.size(),
		"apm_per_npc": 200,
		"nominal_decisions_per_minute": 200 * enemies.size(),
		"decisions_per_minute": decisions * 60.0 / max(elapsed_s, 0.001),
		"requests_sent": _sum_enemies("requests"),
		"skipped_requests": _sum_enemies("skipped_requests"),
		"fallbacks": fallbacks,
		"late_model_answers": decisions - fallbacks - deadline_met,  # answered by the model, late
		"scripted_actions": scripted_actions,
		"model_budget": budget.report() if llm_enabled else {},
		"lines_spoken": lines_spoken,
		"p50_first_token_ms": percentile(Array(first_token_ms), 0.5),
		"p99_first_token_ms": percentile(Array(first_token_ms), 0.99),
		"p50_tokens_per_s": percentile(Array(line_tokens_per_s), 0.5),
		"line_pace_tokens_per_s": enemies[0].npc.pace_tokens_per_s if not enemies.empty() else 0.0,
		"lines_missing_first_token_deadline": lines_late_first_token,
		"late_line_tokens": late_line_tokens,
		"line_samples": line_samples,
		"bridge_main_thread_us_per_frame": runtime.bridge_cost(),
		"runtime_stats": runtime.final_stats,
		"worker_health": runtime.health,
		"health_changes": health_changes,
		"model": runtime.ready_info,
		"renderer": "GLES2 " + VisualServer.get_video_adapter_name(),
		"cpu_cores": OS.get_processor_count(),
		"loadavg_at_end": _loadavg(),
		"cpu_steal_share": _steal_share(cpu_at_start, _cpu_times()),
		"window": [OS.window_size.x, OS.window_size.y],
	}


# [total, steal] CPU time of the machine so far (/proc/stat, clock ticks; [] when unreadable).
static func _cpu_times() -> Array:
	var file := File.new()
	if file.open("/proc/stat", File.READ) != OK:
		return []
	var fields := file.get_line().split(" ", false)  # cpu user nice system idle iowait irq softirq steal ...
	file.close()
	if fields.size() <= 8:
		return []
	var total := 0
	for i in range(1, 9):  # user to steal (guest time is already inside user and nice)
		total += int(fields[i])
	return [total, int(fields[8])]


# The share of the machine's CPU time the hypervisor gave to other guests between two
# _cpu_times() (a virtual machine's steal time; -1 when unknown). Above a few hundredths the
# render takes longer and the idle time the model runs in shrinks (docs/BENCHMARKS.md).
static func _steal_share(before: Array, after: Array) -> float:
	if before.empty() or after.empty() or after[0] <= before[0]:
		return -1.0
	return float(after[1] - before[1]) / (after[0] - before[0])


# /proc/loadavg at the end of the run: these numbers depend on what else the machine runs.
static func _loadavg() -> String:
	var file := File.new()
	if file.open("/proc/loadavg", File.READ) != OK:
		return ""
	var text := file.get_line()
	file.close()
	return text


func _sum_enemies(field: String) -> int:
	var total := 0
	for enemy in enemies:
		total += int(enemy.get(field))
	return total


static func _count_over(values: Array, limit: float) -> int:
	var n := 0
	for v in values:
		if v > limit:
			n += 1
	return n


func _notification(what: int) -> void:
	if what == MainLoop.NOTIFICATION_WM_QUIT_REQUEST and not finished:
		_finish()  # window closed: write the report of what ran


func _finish() -> void:
	finished = true
	if not screenshot_taken:
		_take_screenshot()
	if llm_enabled:
		runtime.shutdown()
	if report_path != "":
		Directory.new().make_dir_recursive(report_path.get_base_dir())
		var file := File.new()
		file.open(report_path, File.WRITE)
		file.store_string(JSON.print(report(), "  ", true))
		file.close()
	get_tree().quit()
