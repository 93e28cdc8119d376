"""CLI commands for layer skipping: `skip heatmap`, `skip build`, `skip eval`.

Calibration and held-out data come from the bundled model's combat task: each sequence is a
situation's prompt followed by the expert policy's answer, tokenized exactly as at training
time (prompt with BOS, then ANSWER_PREFIX + action, then EOS); half of the calibration
sequences also carry the persona's bark (separator and line before the EOS), so the adaptors
learn to speak too. Calibration situations use CALIBRATION_SEED; held-out decisions and
perplexity use the combat task's held-out seed (decisions only).
"""

from __future__ import annotations

import argparse
import json
import random
import time
from pathlib import Path

CALIBRATION_SEED = 31_415_926
CALIBRATION_LINE_SHARE = 0.5
DEFAULT_BUDGETS = (2, 4, 6, 8)
BENCHMARKS = Path("docs/benchmarks")


def register(subcommands: argparse._SubParsersAction) -> None:
    skip = subcommands.add_parser("skip", help="layer skipping: similarity map, bundle, accuracy")
    commands = skip.add_subparsers(dest="skip_command", required=True)

    heatmap = commands.add_parser("heatmap", help="layer-input similarity map (.npy + PNG)")
    _common(heatmap)
    heatmap.add_argument("--out-npy", type=Path, help="default docs/benchmarks/heatmap_<name>.npy")
    heatmap.add_argument("--out-png", type=Path, help="default docs/benchmarks/heatmap_<name>.png")
    heatmap.set_defaults(run=_heatmap)

    build = commands.add_parser("build", help="choose spans, distil adaptors, write the bundle")
    _common(build)
    build.add_argument("--budgets", type=int, nargs="+", default=list(DEFAULT_BUDGETS),
                       help="numbers of layers to skip, one level each")
    build.add_argument("--out", type=Path, help="bundle folder (default MODEL/skip_bundle)")
    build.add_argument("--intermediate", type=int,
                       help="adaptor width (default: grows with the span, 1x..4x hidden)")
    build.add_argument("--mse-steps", type=int, help="stage-1 steps (default: DistillConfig's)")
    build.add_argument("--kl-steps", type=int, help="stage-2 steps (default: DistillConfig's)")
    build.add_argument("--heldout", type=int, default=1000,
                       help="held-out situations for the manifest's accuracy and perplexity")
    build.set_defaults(run=_build)

    cost = commands.add_parser("cost", help="re-measure a bundle's cost savings on this machine")
    _common(cost)
    cost.add_argument("--bundle", type=Path, help="bundle folder (default MODEL/skip_bundle)")
    cost.add_argument("--repeats", type=int, default=15, help="timed requests per level")
    cost.set_defaults(run=_cost)

    evaluate = commands.add_parser("eval", help="accuracy/perplexity of every skipping method")
    _common(evaluate)
    evaluate.add_argument("--bundle", type=Path, help="bundle folder (default MODEL/skip_bundle)")
    evaluate.add_argument("--heldout", type=int, default=1000, help="held-out situations")
    evaluate.add_argument("--out-json", type=Path, default=BENCHMARKS / "skip_accuracy.json")
    evaluate.add_argument("--out-png", type=Path, default=BENCHMARKS / "skip_accuracy.png")
    evaluate.set_defaults(run=_evaluate)


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", default="bundled", help="'bundled' or a local HF model folder")
    parser.add_argument("--calibration", type=int, default=1500,
                        help="calibration situations (prompt + expert answer)")
    parser.add_argument("--batch", type=int, default=64, help="sequences per calibration batch")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")


def _load(args: argparse.Namespace):
    import torch

    from lego_embed.model.loading import load_model

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    return load_model(args.model)


def task_sequences(tokenizer, situations: list[dict], line_share: float = 0.0):
    """Calibration examples (prompt ids + expert answer ids [+ separator + bark] + EOS) and the
    expert actions; every 1/line_share-th situation carries the bark."""
    from lego_embed.npc.output_spec import ANSWER_PREFIX, SAY_SEPARATOR
    from lego_embed.skip.calibration import CalibrationExample
    from lego_embed.tasks.combat.decide import prepare_decision
    from lego_embed.tasks.combat.lines import line_for
    from lego_embed.tasks.combat.policy import ACTIONS, expert_action
    from lego_embed.tasks.combat.state import validate_state

    examples, experts = [], []
    every = round(1 / line_share) if line_share else 0
    for index, situation in enumerate(situations):
        prepared = prepare_decision(tokenizer, situation, ACTIONS)
        state = validate_state(situation)
        expert = expert_action(state)
        answer = tokenizer.encode(ANSWER_PREFIX + expert, add_special_tokens=False)
        if every and index % every == 0:
            answer += tokenizer.encode(SAY_SEPARATOR, add_special_tokens=False)
            answer += tokenizer.encode(" " + line_for(state, expert), add_special_tokens=False)
        examples.append(CalibrationExample(tuple(prepared.prompt_ids),
                                           tuple(answer) + (tokenizer.eos_token_id,)))
        experts.append(expert)
    return examples, experts


def _calibration_batches(loaded, args: argparse.Namespace):
    from lego_embed.skip.calibration import make_batches
    from lego_embed.tasks.combat.policy import random_situation

    rng = random.Random(CALIBRATION_SEED)
    situations = [random_situation(rng) for _ in range(args.calibration)]
    examples, _ = task_sequences(loaded.tokenizer, situations, CALIBRATION_LINE_SHARE)
    return make_batches(examples, args.batch, loaded.tokenizer.pad_token_id), examples


def _heldout(loaded, count: int, batch: int):
    """Held-out prompt + expert answer batches and the constrained action sampler."""
    from lego_embed.npc.actions import ActionTrie, ConstrainedActionSampler
    from lego_embed.skip.calibration import make_batches
    from lego_embed.tasks.combat.evaluation import heldout_situations
    from lego_embed.tasks.combat.policy import ACTIONS

    tokenizer = loaded.tokenizer
    examples, _ = task_sequences(tokenizer, heldout_situations(count))
    sampler = ConstrainedActionSampler(ActionTrie(tokenizer, ACTIONS, tokenizer.eos_token_id))
    return make_batches(examples, batch, tokenizer.pad_token_id), sampler


def _model_name(loaded, requested: str) -> str:
    return "npc" if requested == "bundled" else loaded.path.name


def _bundle_dir(loaded, given: Path | None) -> Path:
    return given if given is not None else loaded.path / "skip_bundle"


def _heatmap(args: argparse.Namespace) -> int:
    from lego_embed.skip.similarity import compute_similarity, save_similarity
    from lego_embed.skip.spans import choose_span

    loaded = _load(args)
    name = _model_name(loaded, args.model)
    batches, _ = _calibration_batches(loaded, args)
    similarity = compute_similarity(loaded.model, batches)
    npy = args.out_npy or BENCHMARKS / f"heatmap_{name}.npy"
    png = args.out_png or BENCHMARKS / f"heatmap_{name}.png"
    save_similarity(similarity, npy, png, f"{name} ({loaded.num_layers} layers)")
    print(f"wrote {npy} and {png} ({similarity.tokens} tokens)")
    for k in range(1, loaded.num_layers // 2 + 1):
        span = choose_span(similarity, k)
        print(f"k={k}: span {span.first_layer}..{span.last_layer} "
              f"(input/output similarity "
              f"{similarity.span_similarity(span.first_layer, span.last_layer):.3f})")
    return 0


def _build(args: argparse.Namespace) -> int:
    from lego_embed.errors import SkipBundleError
    from lego_embed.skip.build import build_bundle
    from lego_embed.skip.distill import DistillConfig
    from lego_embed.skip.evaluate import score_plan

    loaded = _load(args)
    if any(not 1 <= k < loaded.num_layers for k in args.budgets):
        raise SkipBundleError(
            f"--budgets must lie in 1..{loaded.num_layers - 1} for this "
            f"{loaded.num_layers}-layer model (layer 0 always runs)")
    batches, examples = _calibration_batches(loaded, args)
    given = {"intermediate_size": args.intermediate, "mse_steps": args.mse_steps,
             "kl_steps": args.kl_steps}
    config = DistillConfig(**{k: v for k, v in given.items() if v is not None})
    started = time.perf_counter()

    def report(result) -> None:
        print(f"span {result.span.first_layer}..{result.span.last_layer}: unexplained "
              f"{result.unexplained_after_mse:.3f} after MSE, {result.unexplained_final:.3f} "
              f"final, {result.seconds:.1f} s", flush=True)

    facts = {"situations": args.calibration, "seed": CALIBRATION_SEED,
             "line_share": CALIBRATION_LINE_SHARE,
             "tokens": sum(b.real_tokens for b in batches), "mse_steps": config.mse_steps,
             "kl_steps": config.kl_steps, "kl_batches": config.kl_batches,
             "threads": args.threads}
    built = build_bundle(loaded, batches, args.budgets, config, examples[0].prompt_ids,
                         facts, on_distilled=report)
    bundle = built.bundle
    heldout, sampler = _heldout(loaded, args.heldout, args.batch)
    full = score_plan(loaded.model, None, heldout, sampler)
    bundle.full_model = {"accuracy": round(full.accuracy, 4),
                         "perplexity": round(full.perplexity, 4),
                         "heldout_situations": full.decisions}
    for lv in list(bundle.levels):
        score = score_plan(loaded.model, bundle.plan(lv.level), heldout, sampler)
        bundle = bundle.with_measurements(lv.level, accuracy=round(score.accuracy, 4),
                                          perplexity=round(score.perplexity, 4))
    out = _bundle_dir(loaded, args.out)
    bundle.save(out)
    print(json.dumps(bundle.manifest()["levels"], indent=1))
    print(f"wrote {out} in {time.perf_counter() - started:.0f} s "
          f"({bundle.manifest()['total_resident_bytes']} adaptor bytes in all)")
    return 0


def _cost(args: argparse.Namespace) -> int:
    from lego_embed.skip.bundle import SkipBundle
    from lego_embed.skip.cost import measure_cost_savings

    loaded = _load(args)
    folder = _bundle_dir(loaded, args.bundle)
    bundle = SkipBundle.load(folder, loaded)
    _, examples = _calibration_batches(loaded, args)
    plans = {lv.level: bundle.plan(lv.level) for lv in bundle.levels}
    savings = measure_cost_savings(loaded, plans, examples[0].prompt_ids, repeats=args.repeats)
    for level, saving in savings.items():
        bundle = bundle.with_measurements(level, cost_saving=round(saving, 4))
        print(f"level {level} (k={bundle.level(level).skipped_layers}): cost saving {saving:.4f}")
    bundle.save(folder)
    print(f"updated {folder}")
    return 0


def _evaluate(args: argparse.Namespace) -> int:
    from lego_embed.skip.bundle import SkipBundle
    from lego_embed.skip.evaluate import evaluate_bundle, plot_evaluation
    from lego_embed.skip.similarity import compute_similarity

    loaded = _load(args)
    bundle = SkipBundle.load(_bundle_dir(loaded, args.bundle), loaded)
    batches, _ = _calibration_batches(loaded, args)
    similarity = compute_similarity(loaded.model, batches)
    heldout, sampler = _heldout(loaded, args.heldout, args.batch)

    def progress(level: int, method: str, score) -> None:
        print(f"level {level} {method}: accuracy {score.accuracy:.4f}, "
              f"perplexity {score.perplexity:.4f}", flush=True)

    evaluation = evaluate_bundle(loaded.model, bundle, similarity, heldout, sampler,
                                 _model_name(loaded, args.model), on_scored=progress)
    report = evaluation.to_json()
    report["adaptor_bytes"] = {lv.level: lv.adaptor_bytes for lv in bundle.levels}
    report["total_resident_bytes"] = bundle.manifest()["total_resident_bytes"]
    args.out_json.parent.mkdir(parents=True, exist_ok=True)
    args.out_json.write_text(json.dumps(report, indent=1) + "\n")
    plot_evaluation(evaluation, args.out_png)
    for lv in report["levels"]:
        accuracy = " ".join(f"{m}={v:.3f}" for m, v in lv["accuracy"].items())
        print(f"k={lv['skipped_layers']} span {lv['span']}: {accuracy}")
    print(f"loss_reduction_vs_plain_skip={report['loss_reduction_vs_plain_skip']} "
          f"(perplexity-based {report['loss_reduction_vs_plain_skip_perplexity']})")
    print(f"wrote {args.out_json} and {args.out_png}")
    return 0
