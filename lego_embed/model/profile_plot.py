"""A PNG chart of a CostProfile: median subtask duration against prompt or context length."""

from __future__ import annotations

from pathlib import Path

from lego_embed.model.profile import CostProfile


def plot_cost_profile(profile: CostProfile, path: str | Path) -> None:
    """Left: prefill subtasks per prompt length; right: decode subtasks per context length,
    one line per batch size. Durations are medians in microseconds."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, (prefill, decode) = plt.subplots(1, 2, figsize=(11, 4))
    series: dict[tuple[str, str, int], list[tuple[int, float]]] = {}
    for e in profile.entries:
        if e.phase == "prefill":
            key, x = ("prefill", e.kind, 0), e.tokens if e.kind != "head" else e.context_tokens
        else:
            key, x = ("decode", e.kind, e.tokens), e.context_tokens
        series.setdefault(key, []).append((x, e.median_us))
    for (phase, kind, batch), points in sorted(series.items()):
        xs, ys = zip(*sorted(points), strict=True)
        axis = prefill if phase == "prefill" else decode
        axis.plot(xs, ys, marker="o", label=kind if phase == "prefill" else f"{kind} x{batch}")
    prefill.set(title="prefill (one chunk)", xlabel="prompt tokens", ylabel="median us")
    decode.set(title="decode (batch size x)", xlabel="context tokens", ylabel="median us")
    for axis in (prefill, decode):
        axis.grid(alpha=0.3)
        axis.legend(fontsize=8)
    figure.suptitle(
        f"{Path(profile.model).name}: {profile.num_layers} layers, {profile.device}, "
        f"{profile.dtype}, {profile.torch_threads} thread(s)"
    )
    figure.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=110)
    plt.close(figure)
