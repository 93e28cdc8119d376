extends Node
## LegoNPC: one character whose moves and lines come from the LLM running in the game's process
## (the LegoRuntime autoload). Put one in your scene (or LegoNPC.new() from script), connect its
## signals, and ask when the character needs to act or speak. Nothing here waits for the model:
## answers arrive through signals within the deadline, token by token for lines.
##
## Your own prompt: set static_prompt (who the character is, the world's rules: the same for every
## request, so the model reads it once and shares it with every NPC that has the same text) and
## prompt_template (what changed this time, with named fields: "The player says {utterance}").
## The model reads static_prompt + the filled template exactly as written. Then call
##   request_action(fields, actions)            -> decision_made(action, info)
##   request_line(fields)                       -> line_token(text, info)..., line_finished(line, info)
##   request_action_and_line(fields, actions)   -> decision_made, then line_token..., line_finished
## A missing field, a template error, a bad action list or a model problem is decision_failed.
##
## The bundled combat model: leave prompt_template empty. fields is then the combat state (hp,
## enemy_hp 0-100, distance m, enemy_last_action, cooldowns {"dodge": s, "heal": s, "heavy": s},
## allies), persona comes from the exported property; request_line needs fields["say_for"], the
## action the character is doing. request_decision(state) is request_action(state).
##
## When the work does not fit: with supersede on (the default), a new request replaces this NPC's
## requests that have not delivered anything yet (they end with no signal: only the newest is
## answered); an action already made or a line already streaming is kept. fallback_action is
## what the NPC does when the model's action is not there by the deadline: decision_made brings
## it at the deadline with info.fallback = true (for request_action_and_line no line follows).
## A line has no fallback: a late token still comes (info.deadline_met false) and the line goes
## on to its end; whatever ends it early leaves the tokens already shown standing.

## action: one of the allowed actions. info: latency_ms, skip_level, deadline_met, deadline_ms,
## skipped_layers, tokens, request_id, warnings, fallback (true: the model had not answered by
## the deadline and action is fallback_action), status ("decided" or "fallback").
signal decision_made(action: String, info: Dictionary)
## text: the next piece of the line (the pieces joined are the finished line). info: index (1 for
## the first token), latency_ms, deadline_ms (this token's), deadline_met, skip_level, request_id.
signal line_token(text: String, info: Dictionary)
## line: the whole line. info: as decision_made, plus first_token_ms, line_tokens, late_tokens.
signal line_finished(line: String, info: Dictionary)
## reason: what went wrong (missing field, template error, malformed state, model missing),
## readable as is. The game keeps running.
signal decision_failed(reason: String)

## The character for the bundled combat model (ignored once prompt_template is set).
@export var persona := "brute"
## Your own prompt: the static part (persona, world rules, character sheet), shared and reused.
@export_multiline var static_prompt := ""
## Your own prompt: the part that changes, with {named} fields filled from each request's fields.
@export_multiline var prompt_template := "":
	set = set_prompt_template
@export var allowed_actions: Array[String] = [
	"light attack", "heavy attack", "block", "dodge", "heal",
	"approach", "retreat", "shoot", "call for help",
]
## Decisions per minute the NPC needs; its deadline is 60000 / actions_per_minute ms.
@export_range(1.0, 6000.0) var actions_per_minute := 200.0
## Explicit deadline in ms (for an action, and for a line's first token); 0: from actions_per_minute.
@export_range(0.0, 60000.0) var deadline_ms := 0.0
## Longest line, in tokens, and the reading pace the line's tokens are due at (tokens per second).
@export_range(1, 256) var max_line_tokens := 24
@export_range(1.0, 200.0) var pace_tokens_per_s := 15.0
## A line ends before the first of these strings (for example "\n").
@export var stop: Array[String] = []
## Name of this NPC for the runtime; empty means the node's path.
@export var npc_id := ""
## What the NPC does when the model's action is not there by the deadline (or cannot be: the
## runtime predicts no skip level finishes in time): one of the request's actions, delivered
## through decision_made at the deadline with info.fallback = true. "" = no fallback (the NPC
## waits for the model's late answer).
@export var fallback_action := ""
## A new request replaces this NPC's requests that have delivered nothing yet (see above);
## false: every request is answered.
@export var supersede := true

var pending_request := -1    ## request id whose action is still awaited, -1 when none
var last_action := ""        ## the last action decided
var speaking := false        ## a line is being streamed
var line_so_far := ""        ## the streamed pieces of the latest line asked for, joined
var template_fields: Array = []  ## the fields prompt_template names (after the runtime checked it)
var template_error := ""     ## why prompt_template is unusable ("" while fine)
var _line_request := -1


func _ready() -> void:
	if prompt_template != "":
		_check_template()


func set_prompt_template(value: String) -> void:
	prompt_template = value
	template_fields = []
	template_error = ""
	if is_inside_tree() and value != "":
		_check_template()


func get_deadline_ms() -> float:
	return deadline_ms if deadline_ms > 0.0 else 60000.0 / actions_per_minute


func get_npc_id() -> String:
	return npc_id if npc_id != "" else str(get_path())


func is_deciding() -> bool:
	return pending_request >= 0


## Ask for the next action. Returns the request id, or -1 when it failed at once (the reason
## arrives through decision_failed on the next idle frame). Never waits for the model.
func request_action(fields: Dictionary, actions: Array = []) -> int:
	return _request("choice", fields, actions)


## Ask for a line, streamed: line_token for each piece, then line_finished.
func request_line(fields: Dictionary) -> int:
	return _request("line", fields, [])


## Ask for an action and what the character says while doing it, in one generation:
## decision_made as soon as the action is known, then the line as for request_line.
func request_action_and_line(fields: Dictionary, actions: Array = []) -> int:
	return _request("choice_then_line", fields, actions)


## The combat task's original call: request_action(state) with the allowed_actions.
func request_decision(state: Dictionary) -> int:
	return request_action(state)


func _request(output: String, fields: Dictionary, actions: Array) -> int:
	var runtime = get_node_or_null("/root/LegoRuntime")  # the LegoRuntime autoload
	if runtime == null:
		_deliver.call_deferred({"kind": "decision", "request_id": -1, "error": "the LegoRuntime autoload is missing: enable the lego_embed plugin (Project Settings > Plugins), or add LegoRuntime=\"*res://addons/lego_embed/lego_runtime.gd\" under [autoload] in project.godot"})
		return -1
	if template_error != "":
		_deliver.call_deferred({"kind": "decision", "request_id": -1, "error": template_error})
		return -1
	var chosen: Array = actions if not actions.is_empty() else allowed_actions
	var spec := {
		"output": output,
		"fields": fields.duplicate(true),
		"static_prompt": static_prompt,
		"prompt_template": prompt_template,
		"persona": persona,
		"max_tokens": max_line_tokens,
		"stop": stop,
		"pace_tokens_per_s": pace_tokens_per_s,
	}
	if prompt_template == "" and fields.has("say_for"):
		spec["say_for"] = str(fields["say_for"])
		spec["fields"].erase("say_for")
	var options := {"fallback": fallback_action if output != "line" else "", "supersede": supersede}
	var request_id: int = runtime.submit(self, get_npc_id(), spec, chosen, get_deadline_ms(), options)
	if request_id >= 0 and output != "line":
		pending_request = request_id
	if request_id >= 0 and output != "choice":
		speaking = true
		line_so_far = ""
		_line_request = request_id
	return request_id


func _check_template() -> void:
	var runtime = get_node_or_null("/root/LegoRuntime")
	if runtime != null:
		runtime.check_template(self, get_npc_id(), prompt_template)


static func _info(result: Dictionary, deadline: float) -> Dictionary:
	var status := str(result.get("status", "decided"))
	return {
		"latency_ms": float(result.get("latency_ms", 0.0)),
		"skip_level": int(result.get("skip_level", 0)),
		"deadline_met": bool(result.get("deadline_met", false)),
		"deadline_ms": float(result.get("deadline_ms", deadline)),
		"skipped_layers": int(result.get("skipped_layers", 0)),
		"tokens": int(result.get("tokens", 0)),
		"request_id": int(result.get("request_id", -1)),
		"warnings": result.get("warnings", []),
		"fallback": status == "fallback",
		"status": status,
	}


## Called by LegoRuntime with each result of this NPC's requests (kind: action, token,
## decision, checked).
func _deliver(result: Dictionary) -> void:
	var kind := str(result.get("kind", "decision"))
	var request_id := int(result.get("request_id", -1))
	if kind == "checked":
		var check_error: Variant = result.get("error")
		if check_error != null and str(check_error) != "":
			template_error = str(check_error)
			decision_failed.emit(template_error)
		else:
			template_fields = result.get("fields", [])
		return
	if kind == "action":
		if request_id == pending_request:
			pending_request = -1
		last_action = str(result.get("action", ""))
		decision_made.emit(last_action, _info(result, get_deadline_ms()))
		return
	if kind == "token":
		var text := str(result.get("text", ""))
		if request_id == _line_request:
			line_so_far += text
		line_token.emit(text, {
			"index": int(result.get("index", 0)),
			"latency_ms": float(result.get("latency_ms", 0.0)),
			"deadline_ms": float(result.get("deadline_ms", 0.0)),
			"deadline_met": bool(result.get("deadline_met", false)),
			"skip_level": int(result.get("skip_level", 0)),
			"request_id": request_id,
		})
		return
	var status := str(result.get("status", "decided"))
	if request_id == pending_request or request_id < 0:
		pending_request = -1
	if request_id == _line_request:
		speaking = false
	if status == "superseded":  # a newer request of this NPC replaced it before it said anything
		return
	var error: Variant = result.get("error")
	if error != null and str(error) != "":
		decision_failed.emit(str(error))
		return
	var output := str(result.get("output", "choice"))
	var info := _info(result, get_deadline_ms())
	if output == "choice" or status == "fallback":
		last_action = str(result.get("action", ""))
		decision_made.emit(last_action, info)
		return
	info["first_token_ms"] = result.get("first_token_ms")
	info["line_tokens"] = int(result.get("line_tokens", 0))
	info["late_tokens"] = int(result.get("late_tokens", 0))
	info["action"] = result.get("action")
	line_finished.emit(str(result.get("line", "")), info)
