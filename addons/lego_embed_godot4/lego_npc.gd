extends Node
## LegoNPC: put one under an enemy, connect decision_made, and call request_decision(state) when
## the NPC needs its next move. The LLM runs in the game's process (LegoRuntime autoload); the
## answer arrives through decision_made within actions-per-minute's deadline, or decision_failed.
##
## state: a Dictionary with hp, enemy_hp (0-100), distance (m), enemy_last_action (String),
## cooldowns ({"dodge": s, "heal": s, "heavy": s}), allies (int); persona is added from the
## exported property when the state has none.

## action: one of allowed_actions. info: latency_ms, skip_level, deadline_met, deadline_ms,
## skipped_layers, tokens, request_id.
signal decision_made(action: String, info: Dictionary)
## reason: what went wrong (malformed state, model missing, Python error), readable as is.
signal decision_failed(reason: String)

@export var persona := "brute"
@export var allowed_actions: Array[String] = [
	"light attack", "heavy attack", "block", "dodge", "heal",
	"approach", "retreat", "shoot", "call for help",
]
## Decisions per minute the NPC needs; its deadline is 60000 / actions_per_minute ms.
@export_range(1.0, 6000.0) var actions_per_minute := 200.0
## Explicit deadline in ms; 0 means "from actions_per_minute".
@export_range(0.0, 60000.0) var deadline_ms := 0.0
## Name of this NPC for the runtime; empty means the node's path.
@export var npc_id := ""

var pending_request := -1    ## request id in flight, -1 when idle
var last_action := ""        ## the last action decided


func get_deadline_ms() -> float:
	return deadline_ms if deadline_ms > 0.0 else 60000.0 / actions_per_minute


func get_npc_id() -> String:
	return npc_id if npc_id != "" else str(get_path())


func is_deciding() -> bool:
	return pending_request >= 0


## Ask for the next action. Returns the request id, or -1 when it failed at once (the reason
## arrives through decision_failed on the next idle frame). Never waits for the model.
func request_decision(state: Dictionary) -> int:
	var runtime = get_node_or_null("/root/LegoRuntime")  # the LegoRuntime autoload
	if runtime == null:
		_deliver.call_deferred({"request_id": -1, "error": "the LegoRuntime autoload is missing: enable the lego_embed plugin (Project Settings > Plugins)"})
		return -1
	var full_state := state.duplicate(true)
	if not full_state.has("persona"):
		full_state["persona"] = persona
	var request_id: int = runtime.submit(self, get_npc_id(), full_state, allowed_actions, get_deadline_ms())
	if request_id >= 0:
		pending_request = request_id
	return request_id


func _deliver(result: Dictionary) -> void:
	if int(result.get("request_id", -1)) == pending_request:
		pending_request = -1
	var error: Variant = result.get("error")
	if error != null and str(error) != "":
		decision_failed.emit(str(error))
		return
	last_action = str(result.get("action", ""))
	var info := {
		"latency_ms": float(result.get("latency_ms", 0.0)),
		"skip_level": int(result.get("skip_level", 0)),
		"deadline_met": bool(result.get("deadline_met", false)),
		"deadline_ms": float(result.get("deadline_ms", get_deadline_ms())),
		"skipped_layers": int(result.get("skipped_layers", 0)),
		"tokens": int(result.get("tokens", 0)),
		"request_id": int(result.get("request_id", -1)),
	}
	decision_made.emit(last_action, info)
