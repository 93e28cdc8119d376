extends SceneTree
## Drives the demo's ModelBudget (demo_game_godot4/model_budget.gd, path in $LEGO_BUDGET_SCRIPT)
## through a made-up timeline of `overloaded` signals with three enemies 1, 5 and 9 m from the
## player, and prints one line "BUDGET <json>": after each phase, how many enemies were on the
## model and which. test_demo_model_budget.py checks it. Steps of 1/8 s are exact in binary.

const STEP_S = 0.125

var budget: RefCounted
var enemies: Array[Node3D] = []
var phases := []


func _init() -> void:
	var enemy_script := GDScript.new()
	enemy_script.source_code = "extends Node3D\nvar on_model := true\n"
	enemy_script.reload()
	for x: float in [9.0, 1.0, 5.0]:
		var enemy := Node3D.new()
		enemy.set_script(enemy_script)
		enemy.position = Vector3(x, 0.0, 0.0)
		enemies.append(enemy)
	budget = load(OS.get_environment("LEGO_BUDGET_SCRIPT")).new(enemies)
	_run("calm", 1.0)
	budget.on_overloaded(true, {"target_per_s": 1.0})
	_run("overloaded_1.5s", 1.5)
	budget.on_overloaded(false, {})
	_run("recovered_1s", 1.0)
	budget.on_overloaded(true, {"target_per_s": 1.0})
	_run("overloaded_1.875s", 1.875)
	_run("overloaded_2s", 0.125)
	_run("overloaded_3.875s", 1.875)
	_run("overloaded_4s", 0.125)
	_run("overloaded_10s", 6.0)
	budget.on_overloaded(false, {})
	_run("recovered_4.875s", 4.875)
	_run("recovered_5s", 0.125)
	_run("recovered_9.875s", 4.875)
	_run("recovered_10s", 0.125)
	_run("recovered_20s", 10.0)
	print("BUDGET " + JSON.stringify({"phases": phases, "report": budget.report()}))
	for enemy in enemies:
		enemy.free()
	quit(0)


func _run(name: String, seconds: float) -> void:
	for i in int(seconds / STEP_S):
		budget.update(STEP_S, Vector3.ZERO)
	var on := []
	for enemy in enemies:
		on.append(enemy.on_model)
	phases.append({"phase": name, "on_model": budget.on_model, "enemies_on_model": on})
