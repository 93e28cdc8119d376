extends Control
# Frame-time graph: the last HISTORY frames' durations in ms (0..MAX_MS), with the frame
# budget (1000 / Engine.target_fps ms) as a line.

const HISTORY = 180
const MAX_MS = 50.0

var frame_ms := []


func push(ms: float) -> void:
	frame_ms.append(ms)
	if frame_ms.size() > HISTORY:
		frame_ms.pop_front()
	update()


func _draw() -> void:
	var size := rect_size
	draw_rect(Rect2(Vector2.ZERO, size), Color(0, 0, 0, 0.55))
	var budget_ms := 1000.0 / (Engine.target_fps if Engine.target_fps > 0 else 60)
	var budget_y := size.y * (1.0 - budget_ms / MAX_MS)
	draw_line(Vector2(0, budget_y), Vector2(size.x, budget_y), Color(1, 1, 0, 0.6), 1.0)
	if frame_ms.size() < 2:
		return
	var points := PoolVector2Array()
	for i in range(frame_ms.size()):
		var x := size.x * float(i) / float(HISTORY - 1)
		var y := size.y * (1.0 - min(frame_ms[i], MAX_MS) / MAX_MS)
		points.append(Vector2(x, y))
	draw_polyline(points, Color(0.3, 1.0, 0.4), 1.5)
