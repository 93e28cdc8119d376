extends Spatial
# An enemy whose every move is chosen by the NPC LLM through its LegoNPC child: every
# 60 / actions_per_minute seconds it sends its combat state and carries out the action that
# comes back. When it is not already speaking (and has been quiet for QUIET_S) it asks for the
# action and the persona's bark in one request (request_action_and_line); the bark streams into
# its speech bubble token by token. With the LLM off (LEGO_EMBED_ENABLED=0) a small rule set
# picks the action at the same rate, so both runs do the same game work.
#
# Requests follow a fixed timeline (next_request_s += period), not "period after the last
# answer", so frame quantisation and answer latency do not lower the rate: the delivered rate
# is the nominal one. At most MAX_IN_FLIGHT requests wait at once; a request the timeline would
# make beyond that is counted in `skipped_requests` (an overloaded model shows up there).
#
# When the work does not fit (docs/GODOT.md): every request carries a fallback, the action the
# rules pick for the state it was asked with, which the enemy carries out at the deadline if
# the model has not answered by then; and while the arena's ModelBudget has this enemy off the
# model (`on_model` false: the runtime said it is overloaded), it acts on those rules directly.

const LegoNPC = preload("res://addons/lego_embed/lego_npc.gd")
const ARENA_HALF = 11.0
const SPEED = 3.5
const MELEE_M = 2.5
const SHOOT_M = 15.0
const MAX_IN_FLIGHT = 2
const QUIET_S = 1.5          # silence between two lines of one enemy
const BUBBLE_HOLD_S = 2.0    # how long a finished line stays in the bubble

signal acted(enemy, action, info)
signal failed(enemy, reason)
signal spoke(enemy, line, info)

var persona := "brute"
var color := Color.red
var hp := 100.0
var action := "idle"
var action_left_s := 0.0
var clock_s := 0.0           # time since the enemy became active
var next_request_s := 0.0    # when the timeline asks for the next action
var in_flight := 0           # requests whose action has not arrived yet
var requests := 0            # requests sent
var skipped_requests := 0    # timeline slots dropped because MAX_IN_FLIGHT requests waited
var bubble_text := ""        # what the speech bubble shows (the line so far)
var bubble_left_s := 0.0     # time the finished line stays up
var quiet_s := 0.0           # time since the last line finished
var line_token_ms := []      # latency (ms from the request) of each token of the current line
var cooldowns := {"dodge": 0.0, "heal": 0.0, "heavy": 0.0}
var npc: Node
var llm_enabled := true
var active := false          # false until the model is ready (LLM on) or from the start (off)
var on_model := true         # false while the arena's ModelBudget has this enemy on the rules
var arena: Node
var rng := RandomNumberGenerator.new()
var dodge_dir := Vector3.ZERO


func _ready() -> void:
	var body := MeshInstance.new()
	var mesh := CylinderMesh.new()
	mesh.top_radius = 0.3
	mesh.bottom_radius = 0.55
	mesh.height = 1.9
	body.mesh = mesh
	body.translation = Vector3(0, 0.95, 0)
	var material := SpatialMaterial.new()
	material.albedo_color = color
	body.material_override = material
	add_child(body)
	var head := MeshInstance.new()
	var sphere := SphereMesh.new()
	sphere.radius = 0.3
	sphere.height = 0.6
	head.mesh = sphere
	head.translation = Vector3(0, 2.15, 0)
	head.material_override = material
	add_child(head)
	npc = LegoNPC.new()
	npc.name = "LegoNPC"
	npc.persona = persona
	npc.actions_per_minute = 200.0
	npc.supersede = false  # every request of the timeline is answered (MAX_IN_FLIGHT bounds them)
	npc.connect("decision_made", self, "_on_decision_made")
	npc.connect("decision_failed", self, "_on_decision_failed")
	npc.connect("line_token", self, "_on_line_token")
	npc.connect("line_finished", self, "_on_line_finished")
	add_child(npc)


func state() -> Dictionary:
	var player: Spatial = arena.player
	var allies := 0
	for other in arena.enemies:
		if other != self and other.translation.distance_to(translation) < 6.0:
			allies += 1
	return {
		"hp": int(ceil(hp)),
		"enemy_hp": int(ceil(player.hp)),
		"distance": stepify(translation.distance_to(player.translation), 0.1),
		"enemy_last_action": player.last_action,
		"cooldowns": {
			"dodge": int(ceil(cooldowns["dodge"])),
			"heal": int(ceil(cooldowns["heal"])),
			"heavy": int(ceil(cooldowns["heavy"])),
		},
		"allies": allies,
	}


func take_damage(amount: float) -> void:
	if action == "block":
		amount *= 0.25
	elif action == "dodge":
		amount = 0.0
	hp = max(0.0, hp - amount)
	if hp <= 0.0:
		hp = 100.0  # respawn at the arena's edge so the fight goes on
		translation = Vector3(rng.randf_range(-ARENA_HALF, ARENA_HALF), 0, -ARENA_HALF)


func _process(delta: float) -> void:
	if not active:
		return
	for key in cooldowns:
		cooldowns[key] = max(0.0, cooldowns[key] - delta)
	clock_s += delta
	action_left_s -= delta
	if bubble_left_s > 0.0:
		bubble_left_s -= delta
		if bubble_left_s <= 0.0:
			bubble_text = ""
	if not npc.speaking:
		quiet_s += delta
	var period_s: float = 60.0 / npc.actions_per_minute
	if clock_s >= next_request_s:
		next_request_s += period_s
		_request()
	_move(delta)


func _request() -> void:
	if not llm_enabled or not on_model:
		_start_action(rule_action(state()), {"latency_ms": 0.0, "skip_level": 0, "deadline_met": true, "scripted": true})
		return
	if in_flight >= MAX_IN_FLIGHT:
		skipped_requests += 1
		return
	npc.fallback_action = rule_action(state())  # done at the deadline if the model is late
	var request_id: int
	if not npc.speaking and quiet_s >= QUIET_S:
		quiet_s = 0.0
		bubble_text = ""
		request_id = npc.request_action_and_line(state())
	else:
		request_id = npc.request_action(state())
	if request_id >= 0:
		in_flight += 1
		requests += 1


# The rules: a few of the same flavour as the model's training policy. They drive the LLM-off
# game, the enemies off the model, and each request's fallback.
func rule_action(s: Dictionary) -> String:
	if s["hp"] < 30 and s["cooldowns"]["heal"] == 0:
		return "heal"
	if s["enemy_last_action"] == "heavy_windup" and s["distance"] < 3.0:
		return "dodge" if s["cooldowns"]["dodge"] == 0 else "block"
	if s["distance"] > MELEE_M:
		return "shoot" if persona == "coward" and s["distance"] < SHOOT_M else "approach"
	return "heavy attack" if s["cooldowns"]["heavy"] == 0 else "light attack"


func _on_decision_made(decided: String, info: Dictionary) -> void:
	in_flight = max(0, in_flight - 1)
	_start_action(decided, info)


func _on_decision_failed(reason: String) -> void:
	in_flight = max(0, in_flight - 1)
	emit_signal("failed", self, reason)


func _on_line_token(text: String, info: Dictionary) -> void:
	bubble_text += text
	bubble_left_s = 0.0
	if line_token_ms.empty() or info["index"] > line_token_ms.size():
		line_token_ms.append(info["latency_ms"])


func _on_line_finished(line: String, info: Dictionary) -> void:
	bubble_text = line
	bubble_left_s = BUBBLE_HOLD_S
	quiet_s = 0.0
	var spoken := info.duplicate()
	var n := line_token_ms.size()
	spoken["tokens_per_s"] = (n - 1) * 1000.0 / (line_token_ms[n - 1] - line_token_ms[0]) if n >= 2 and line_token_ms[n - 1] > line_token_ms[0] else 0.0
	line_token_ms = []
	emit_signal("spoke", self, line, spoken)


func _start_action(decided: String, info: Dictionary) -> void:
	action = decided
	action_left_s = 60.0 / npc.actions_per_minute
	var player: Spatial = arena.player
	var distance := translation.distance_to(player.translation)
	match decided:
		"light attack":
			if distance <= MELEE_M:
				player.take_damage(4.0)
		"heavy attack":
			if cooldowns["heavy"] <= 0.0 and distance <= MELEE_M + 0.5:
				player.take_damage(10.0)
			cooldowns["heavy"] = 3.0
		"heal":
			if cooldowns["heal"] <= 0.0:
				hp = min(100.0, hp + 20.0)
			cooldowns["heal"] = 5.0
		"dodge":
			cooldowns["dodge"] = 2.0
			dodge_dir = Vector3(rng.randf_range(-1, 1), 0, rng.randf_range(-1, 1)).normalized()
		"shoot":
			if distance <= SHOOT_M:
				player.take_damage(2.0)
	emit_signal("acted", self, decided, info)


func _move(delta: float) -> void:
	var player: Spatial = arena.player
	var to_player := player.translation - translation
	to_player.y = 0.0
	var step := Vector3.ZERO
	match action:
		"approach":
			if to_player.length() > 1.4:
				step = to_player.normalized() * SPEED
		"retreat":
			step = -to_player.normalized() * SPEED
		"dodge":
			step = dodge_dir * SPEED * 1.5
		"call for help":
			step = -to_player.normalized() * SPEED * 0.5
	for other in arena.enemies:  # keep a little apart so each stays readable
		var away: Vector3 = translation - other.translation
		away.y = 0.0
		if other != self and away.length() < 1.6:
			step += away.normalized() * SPEED * 0.8 if away.length() > 0.01 else Vector3(1, 0, 0)
	translation += step * delta
	translation.x = clamp(translation.x, -ARENA_HALF, ARENA_HALF)
	translation.z = clamp(translation.z, -ARENA_HALF, ARENA_HALF)
	if to_player.length() > 0.1:
		look_at(translation + to_player, Vector3.UP)
