extends RefCounted
## The project settings lego_embed reads (Project > Project Settings > General > Lego Embed),
## with their defaults; the same names as the Godot 3 addon, plus lego_embed/runtime/gpu_timestamps.
## The defaults work out of the box: the bundled NPC model on the CPU, the Python that the bridge
## was built against (or LEGO_EMBED_PYTHON).

const DEFAULTS = {
	# false: LegoRuntime starts no Python at all (every request fails with a clear reason);
	# the environment variable LEGO_EMBED_ENABLED=0 does the same for one run.
	"lego_embed/runtime/enabled": true,
	# "bundled" (the model shipped in the lego_embed package) or a model folder (res:// or
	# absolute). $LEGO_EMBED_MODEL overrides it.
	"lego_embed/model/path": "bundled",
	# torch device for the LLM: "cpu" or "cuda".
	"lego_embed/model/device": "cpu",
	# Python executable whose packages the bridge uses (a venv's bin/python works). Empty: the
	# interpreter found by python3-config at build time. $LEGO_EMBED_PYTHON overrides it.
	"lego_embed/python/executable": "",
	# Extra folders put first on Python's sys.path (res:// or absolute), e.g. a source checkout.
	"lego_embed/python/sys_path": [],
	# Threads torch may use for the LLM; 1 leaves the other cores to the game.
	"lego_embed/runtime/torch_threads": 1,
	# Longest time (ms) the game thread can wait for Python's GIL when it calls the bridge.
	"lego_embed/runtime/switch_interval_ms": 0.5,
	# Extra keyword arguments for the runtime's RuntimeConfig ($LEGO_EMBED_RUNTIME_OPTIONS, a JSON
	# object, overrides it).
	"lego_embed/runtime/options": {},
	# Godot 4 on a RenderingDevice driver (Vulkan, D3D12, Metal): measure the root viewport's GPU
	# time and forward the GPU timestamps the engine reads back to the runtime (docs/GODOT.md).
	"lego_embed/runtime/gpu_timestamps": true,
}


static func register_defaults() -> void:
	for setting_name: String in DEFAULTS:
		var value: Variant = DEFAULTS[setting_name]
		if not ProjectSettings.has_setting(setting_name):
			ProjectSettings.set_setting(setting_name, value)
		ProjectSettings.set_initial_value(setting_name, value)
		ProjectSettings.add_property_info({"name": setting_name, "type": typeof(value)})


static func read(setting_name: String) -> Variant:
	if ProjectSettings.has_setting(setting_name):
		return ProjectSettings.get_setting(setting_name)
	return DEFAULTS[setting_name]


static func enabled() -> bool:
	if OS.has_environment("LEGO_EMBED_ENABLED"):
		return not (OS.get_environment("LEGO_EMBED_ENABLED") in ["0", "false", "off", "no"])
	return bool(read("lego_embed/runtime/enabled"))


static func global_path(path: String) -> String:
	if path.begins_with("res://") or path.begins_with("user://"):
		return ProjectSettings.globalize_path(path)
	return path


## The dictionary LegoBridge.start() takes.
static func bridge_config() -> Dictionary:
	var executable: String = read("lego_embed/python/executable")
	if OS.has_environment("LEGO_EMBED_PYTHON"):
		executable = OS.get_environment("LEGO_EMBED_PYTHON")
	var sys_path := []
	for entry: String in read("lego_embed/python/sys_path"):
		sys_path.append(global_path(entry))
	var model: String = read("lego_embed/model/path")
	if OS.has_environment("LEGO_EMBED_MODEL"):
		model = OS.get_environment("LEGO_EMBED_MODEL")
	if model != "bundled":
		model = global_path(model)
	return {
		"model": model,
		"device": read("lego_embed/model/device"),
		"python_executable": global_path(executable),
		"sys_path": sys_path,
		"torch_threads": int(read("lego_embed/runtime/torch_threads")),
		"switch_interval_ms": float(read("lego_embed/runtime/switch_interval_ms")),
		"runtime_options": runtime_options(),
	}


## lego_embed/runtime/options, or $LEGO_EMBED_RUNTIME_OPTIONS (a JSON object) when set.
static func runtime_options() -> Dictionary:
	if OS.has_environment("LEGO_EMBED_RUNTIME_OPTIONS"):
		var parsed: Variant = JSON.parse_string(OS.get_environment("LEGO_EMBED_RUNTIME_OPTIONS"))
		if typeof(parsed) == TYPE_DICTIONARY:
			return parsed
		push_error("lego_embed: LEGO_EMBED_RUNTIME_OPTIONS is not a JSON object; using the project setting")
	return (read("lego_embed/runtime/options") as Dictionary).duplicate(true)


## The frame budget (ms) the engine paces frames to: 1000 / Engine.max_fps when the game caps its
## frame rate (Project Settings > Application > Run > Max FPS), else one 60 Hz vsync period.
static func engine_frame_budget_ms() -> float:
	if Engine.max_fps > 0:
		return 1000.0 / Engine.max_fps
	return 1000.0 / 60.0
