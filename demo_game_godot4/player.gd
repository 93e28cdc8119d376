extends Node3D
## The player: keyboard-driven (WASD/arrows move, J light attack, K heavy attack, L block,
## H heal), or a scripted bot (LEGO_DEMO_BOT=1, used headless) that fights the nearest enemy.
## `last_action` uses the enemy_last_action vocabulary the NPC model knows.

const SPEED = 4.5
const ARENA_HALF = 11.0
const HEAVY_WINDUP_S = 0.6

var hp := 100.0
var last_action := "idle"
var use_bot := false
var heal_cooldown := 0.0
var windup_left := 0.0
var attack_cooldown := 0.0
var bot_timer := 0.0
var bot_plan := "approach"
var rng := RandomNumberGenerator.new()
var arena: Node3D


func _ready() -> void:
	rng.seed = 11
	var body := MeshInstance3D.new()
	var mesh := CylinderMesh.new()
	mesh.top_radius = 0.45
	mesh.bottom_radius = 0.45
	mesh.height = 1.8
	body.mesh = mesh
	body.position = Vector3(0, 0.9, 0)
	var material := StandardMaterial3D.new()
	material.albedo_color = Color(0.2, 0.55, 1.0)
	body.material_override = material
	add_child(body)


func take_damage(amount: float) -> void:
	if last_action == "block":
		amount *= 0.25
	hp = maxf(0.0, hp - amount)
	if hp <= 0.0:
		hp = 100.0  # the demo never ends on a death: the player respawns at full health
		position = Vector3.ZERO


func _process(delta: float) -> void:
	heal_cooldown = maxf(0.0, heal_cooldown - delta)
	attack_cooldown = maxf(0.0, attack_cooldown - delta)
	if windup_left > 0.0:
		windup_left -= delta
		if windup_left <= 0.0:
			_strike(12.0, 3.0, "heavy_attack")
		return
	var move := _bot_move(delta) if use_bot else _keyboard_move()
	if move.length() > 0.01:
		position += move.normalized() * SPEED * delta
		position.x = clampf(position.x, -ARENA_HALF, ARENA_HALF)
		position.z = clampf(position.z, -ARENA_HALF, ARENA_HALF)
		look_at(position + move, Vector3.UP)


func _keyboard_move() -> Vector3:
	var move := Vector3.ZERO
	if Input.is_key_pressed(KEY_W) or Input.is_key_pressed(KEY_UP):
		move.z -= 1
	if Input.is_key_pressed(KEY_S) or Input.is_key_pressed(KEY_DOWN):
		move.z += 1
	if Input.is_key_pressed(KEY_A) or Input.is_key_pressed(KEY_LEFT):
		move.x -= 1
	if Input.is_key_pressed(KEY_D) or Input.is_key_pressed(KEY_RIGHT):
		move.x += 1
	if Input.is_key_pressed(KEY_L):
		last_action = "block"
	elif Input.is_key_pressed(KEY_J) and attack_cooldown <= 0.0:
		_strike(5.0, 2.5, "light_attack")
	elif Input.is_key_pressed(KEY_K) and attack_cooldown <= 0.0:
		windup_left = HEAVY_WINDUP_S
		last_action = "heavy_windup"
	elif Input.is_key_pressed(KEY_H) and heal_cooldown <= 0.0:
		_heal()
	elif move.length() > 0.0:
		last_action = "approach"
	else:
		last_action = "idle"
	return move


func _bot_move(delta: float) -> Vector3:
	var target: Node3D = arena.nearest_enemy(position)
	if target == null:
		last_action = "idle"
		return Vector3.ZERO
	var to_target := target.position - position
	to_target.y = 0.0
	var distance := to_target.length()
	bot_timer -= delta
	if bot_timer <= 0.0:
		bot_timer = rng.randf_range(0.4, 1.2)
		var roll := rng.randf()
		if hp < 35.0 and heal_cooldown <= 0.0:
			bot_plan = "heal"
		elif roll < 0.15:
			bot_plan = "block"
		elif roll < 0.25:
			bot_plan = "retreat"
		elif roll < 0.35:
			bot_plan = "shoot"
		else:
			bot_plan = "fight"
	match bot_plan:
		"heal":
			_heal()
			bot_plan = "fight"
			return Vector3.ZERO
		"block":
			last_action = "block"
			return Vector3.ZERO
		"retreat":
			last_action = "retreat"
			return -to_target
		"shoot":
			if attack_cooldown <= 0.0 and distance < 15.0:
				_strike(3.0, 15.0, "shoot")
			return Vector3.ZERO
	if distance > 2.0:
		last_action = "approach"
		return to_target
	if attack_cooldown <= 0.0:
		if rng.randf() < 0.35:
			windup_left = HEAVY_WINDUP_S
			last_action = "heavy_windup"
		else:
			_strike(5.0, 2.5, "light_attack")
	return Vector3.ZERO


func _heal() -> void:
	hp = minf(100.0, hp + 25.0)
	heal_cooldown = 6.0
	last_action = "heal"


func _strike(damage: float, reach_m: float, action: String) -> void:
	last_action = action
	attack_cooldown = 0.5
	for enemy in arena.enemies:
		if enemy.position.distance_to(position) <= reach_m:
			enemy.take_damage(damage)
			if action != "shoot":
				continue
			break
