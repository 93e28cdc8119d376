extends Control
## Frame-time graph: the last HISTORY frames' durations in ms (0..MAX_MS), with the frame
## budget (1000 / Engine.max_fps ms) as a line.

const HISTORY = 180
const MAX_MS = 50.0

var frame_ms: Array[float] = []


func push(ms: float) -> void:
	frame_ms.append(ms)
	if frame_ms.size() > HISTORY:
		frame_ms.pop_front()
	queue_redraw()


func _draw() -> void:
	draw_rect(Rect2(Vector2.ZERO, size), Color(0, 0, 0, 0.55))
	var budget_ms := 1000.0 / (Engine.max_fps if Engine.max_fps > 0 else 60)
	var budget_y := size.y * (1.0 - budget_ms / MAX_MS)
	draw_line(Vector2(0, budget_y), Vector2(size.x, budget_y), Color(1, 1, 0, 0.6), 1.0)
	if frame_ms.size() < 2:
		return
	var points := PackedVector2Array()
	for i in frame_ms.size():
		var x := size.x * float(i) / float(HISTORY - 1)
		var y := size.y * (1.0 - minf(frame_ms[i], MAX_MS) / MAX_MS)
		points.append(Vector2(x, y))
	draw_polyline(points, Color(0.3, 1.0, 0.4), 1.5)
