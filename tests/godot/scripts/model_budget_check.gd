extends SceneTree
## Drives the demo's ModelBudget (demo_game_godot4/model_budget.gd, path in $LEGO_BUDGET_SCRIPT)
## with three enemies 9, 1 and 5 m from the player through the timeline in
## $LEGO_BUDGET_TIMELINE (JSON: {"overloaded": bool} sends the signal, {"phase": name,
## "seconds": s} lets s pass), and prints one line "BUDGET <json>": after each phase, how many
## enemies were on the model and which. test_demo_model_budget.py writes the timeline and checks
## the line. Steps of 1/8 s are exact in binary.

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
	for step: Dictionary in JSON.parse_string(OS.get_environment("LEGO_BUDGET_TIMELINE")):
		if step.has("overloaded"):
			budget.on_overloaded(step["overloaded"], {})
		else:
			_run(step["phase"], step["seconds"])
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
