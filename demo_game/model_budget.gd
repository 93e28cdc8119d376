extends Reference
# How many enemies decide through the model, and which: the demo's answer to the runtime's
# back-pressure (docs/GODOT.md, "When the work does not fit"). The nearest `on_model` enemies
# ask the model; the others act on the rules of the LLM-off game, at the same rate.
#
# The runtime's `overloaded` state flips for moments when demand sits near capacity, and each
# request already has a fallback for those. So one enemy leaves the model only once the
# runtime has been overloaded for CUT_AFTER_S in a row, and one more every CUT_AFTER_S while
# it stays so (down to one enemy); one enemy goes back to the model every RAISE_AFTER_S in
# which the runtime was not overloaded. (The same as demo_game_godot4/model_budget.gd.)

const CUT_AFTER_S = 2.0
const RAISE_AFTER_S = 5.0

var enemies := []
var on_model := 0          # enemies deciding through the model now
var fewest_on_model := 0   # the smallest on_model so far
var overloaded_s := 0.0    # seconds the runtime reported itself overloaded
var reduced_s := 0.0       # seconds with fewer than all enemies on the model
var signals := 0           # overloaded signals received (both directions)
var _overloaded := false
var _since_change_s := 0.0
var _player_position := Vector3.ZERO


func _init(all_enemies: Array) -> void:
	enemies = all_enemies
	on_model = enemies.size()
	fewest_on_model = on_model


func on_overloaded(active: bool, _info: Dictionary) -> void:
	signals += 1
	_overloaded = active
	_since_change_s = 0.0


# Called every frame while the game runs: applies the timed steps and hands the model to the
# enemies nearest to `player_position`.
func update(delta: float, player_position: Vector3) -> void:
	_since_change_s += delta
	if _overloaded:
		overloaded_s += delta
		if _since_change_s >= CUT_AFTER_S:
			_set_on_model(on_model - 1)
	elif on_model < enemies.size() and _since_change_s >= RAISE_AFTER_S:
		_set_on_model(on_model + 1)
	if on_model < enemies.size():
		reduced_s += delta
	_player_position = player_position
	var by_distance := enemies.duplicate()
	by_distance.sort_custom(self, "_nearer")
	for i in by_distance.size():
		by_distance[i].on_model = i < on_model


func report() -> Dictionary:
	return {
		"fewest_on_model": fewest_on_model,
		"on_model_at_end": on_model,
		"overloaded_s": overloaded_s,
		"reduced_s": reduced_s,
		"overloaded_signals": signals,
	}


func _nearer(a: Spatial, b: Spatial) -> bool:
	return a.translation.distance_to(_player_position) < b.translation.distance_to(_player_position)


func _set_on_model(count: int) -> void:
	on_model = int(clamp(count, 1, enemies.size()))
	fewest_on_model = int(min(fewest_on_model, on_model))
	_since_change_s = 0.0
