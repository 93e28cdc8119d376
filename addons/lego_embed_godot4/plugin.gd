@tool
extends EditorPlugin
## Editor plugin: registers the LegoNPC node, the LegoRuntime autoload and the project settings.

const Settings = preload("res://addons/lego_embed/lego_settings.gd")


func _enter_tree() -> void:
	Settings.register_defaults()
	add_autoload_singleton("LegoRuntime", "res://addons/lego_embed/lego_runtime.gd")
	add_custom_type("LegoNPC", "Node", preload("res://addons/lego_embed/lego_npc.gd"), null)


func _exit_tree() -> void:
	remove_custom_type("LegoNPC")
	remove_autoload_singleton("LegoRuntime")
