"""CLI commands about NPC decisions: `decide` and `eval`."""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

from lego_embed.errors import InvalidGameStateError

DEFAULT_EVAL_OUT = Path("docs/benchmarks/npc_model_eval.json")


def register(subcommands: argparse._SubParsersAction) -> None:
    decide = subcommands.add_parser(
        "decide", help="print NPC decisions and barks for combat states")
    decide.add_argument("--model", default="bundled", help="'bundled' or a local HF model folder")
    source = decide.add_mutually_exclusive_group(required=True)
    source.add_argument("--samples", action="store_true", help="the built-in sample situations")
    source.add_argument("--state", help="one game state as JSON")
    decide.add_argument("--actions", help="comma-separated allowed actions (default: all)")
    decide.set_defaults(run=_decide)

    evaluate = subcommands.add_parser(
        "eval", help="held-out agreement with the expert policy and bark quality")
    evaluate.add_argument("--model", default="bundled")
    evaluate.add_argument("--states", type=int, default=2000, help="held-out states to decide")
    evaluate.add_argument("--line-states", type=int, default=1000,
                          help="held-out states to speak a bark for (0: skip barks)")
    evaluate.add_argument("--level-line-states", type=int, default=200,
                          help="held-out states per skip level for bark quality at that level "
                               "(the model's skip bundle; 0: skip)")
    evaluate.add_argument("--out", type=Path, default=DEFAULT_EVAL_OUT)
    evaluate.set_defaults(run=_evaluate)


def _decide(args: argparse.Namespace) -> int:
    from lego_embed.model.loading import load_model
    from lego_embed.tasks.combat.decide import CombatDecider
    from lego_embed.tasks.combat.policy import ACTIONS, SAMPLE_SITUATIONS, expert_action
    from lego_embed.tasks.combat.state import validate_state

    if args.samples:
        situations = list(SAMPLE_SITUATIONS)
    else:
        try:
            situations = [("state", json.loads(args.state))]
        except json.JSONDecodeError as error:
            raise InvalidGameStateError("<state>", f"--state is not valid JSON: {error}") from error
    actions = tuple(a.strip() for a in args.actions.split(",")) if args.actions else ACTIONS
    decider = CombatDecider(load_model(args.model))
    decider.decide(situations[0][1], actions)
    for label, state in situations:
        decision = decider.decide(state, actions)
        expert = expert_action(validate_state(state))
        print(
            f"{label:50s} -> {decision.action:14s} (expert: {expert:14s}) "
            f"{decision.latency_ms:6.1f} ms, {decision.prompt_tokens} prompt tokens, "
            f"{decision.generated_tokens} generated"
        )
        spoken = decider.speak(state, actions)
        print(f"{'':50s}    {spoken.action} + says: {spoken.line!r} "
              f"({spoken.generated_tokens} tokens, {spoken.latency_ms:.1f} ms)")
    return 0


def _evaluate(args: argparse.Namespace) -> int:
    from lego_embed.model.loading import load_model
    from lego_embed.tasks.combat.decide import CombatDecider
    from lego_embed.tasks.combat.evaluation import expert_agreement, line_quality

    loaded = load_model(args.model)
    decider = CombatDecider(loaded)
    latencies: list[float] = []

    def decide(state: dict, actions: tuple[str, ...]) -> str:
        decision = decider.decide(state, actions)
        latencies.append(decision.latency_ms)
        return decision.action

    result = expert_agreement(decide, args.states)
    line_latencies: list[float] = []

    def speak(state: dict, actions: tuple[str, ...]) -> tuple[str | None, str | None]:
        answer = decider.speak(state, actions)
        line_latencies.append(answer.latency_ms)
        return answer.action, answer.line

    lines = line_quality(speak, args.line_states) if args.line_states else None
    by_level = _line_quality_by_level(loaded, decider, args.level_line_states)
    report = {
        "model": args.model,
        "n_layers": loaded.num_layers,
        "size_bytes": sum(f.stat().st_size for f in loaded.path.glob("*.safetensors")),
        "heldout_agreement": round(result.agreement, 4),
        "heldout_states": result.states,
        "p50_decision_ms_cpu": round(statistics.median(latencies), 2),
    }
    if lines is not None:
        report.update({
            "line_states": lines.states,
            "line_judged_right": round(lines.right, 4),
            "line_exact_for_situation": round(lines.exact, 4),
            "action_agreement_with_line": round(lines.action_agreement, 4),
            "line_checker": "corpus membership for (persona, action): "
                            "lego_embed.tasks.combat.line_check.LineChecker",
            "p50_action_and_line_ms_cpu": round(statistics.median(line_latencies), 2),
        })
    if by_level:
        report["line_quality_by_skip_level"] = by_level
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))
    return 0


def _line_quality_by_level(loaded, decider, states: int) -> list[dict]:
    """Action agreement and bark quality with the whole generation at each level of the
    model's skip bundle ([] when it has none or `states` is 0)."""
    from lego_embed.errors import SkipBundleError
    from lego_embed.skip.bundle import SkipBundle
    from lego_embed.tasks.combat.evaluation import line_quality

    folder = loaded.path / "skip_bundle"
    if not states or not folder.is_dir():
        return []
    try:
        bundle = SkipBundle.load(folder, loaded)
    except SkipBundleError:
        return []
    rows = []
    for level in bundle.levels:
        plan = bundle.plan(level.level)

        def speak(state: dict, actions: tuple[str, ...], plan=plan):
            answer = decider.speak(state, actions, layer_plan=plan)
            return answer.action, answer.line

        quality = line_quality(speak, states)
        rows.append({"level": level.level, "skipped_layers": level.skipped_layers,
                     "states": states, "line_judged_right": round(quality.right, 4),
                     "line_exact_for_situation": round(quality.exact, 4),
                     "action_agreement": round(quality.action_agreement, 4)})
        print(f"level {level.level}: barks right {quality.right:.3f}", flush=True)
    return rows
