extends SceneTree
# The Godot 3 twin of model_budget_check.gd: drives demo_game/model_budget.gd (path in
# $LEGO_BUDGET_SCRIPT) through the timeline in $LEGO_BUDGET_TIMELINE and prints the same
# "BUDGET <json>" line.

const STEP_S = 0.125

var budget: Reference
var enemies := []
var phases := []


func _init() -> void:
	var enemy_script := GDScript.new()
	enemy_script.source_code = "extends Spatial\nvar on_model := true\n"
	enemy_script.reload()
	for x in [9.0, 1.0, 5.0]:
		var enemy := Spatial.new()
		enemy.set_script(enemy_script)
		enemy.translation = Vector3(x, 0.0, 0.0)
		enemies.append(enemy)
	budget = load(OS.get_environment("LEGO_BUDGET_SCRIPT")).new(enemies)
	for step in parse_json(OS.get_environment("LEGO_BUDGET_TIMELINE")):
		if step.has("overloaded"):
			budget.on_overloaded(step["overloaded"], {})
		else:
			_run(step["phase"], step["seconds"])
	print("BUDGET " + to_json({"phases": phases, "report": budget.report()}))
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
