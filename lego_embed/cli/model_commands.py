"""CLI commands about the model itself: `profile`."""

from __future__ import annotations

import argparse
import sys

DTYPES = ("float32", "bfloat16", "float16")  # torch dtype names; torch is imported when used


def _lengths(text: str) -> list[int]:
    try:
        return [int(part) for part in text.split(",") if part.strip()]
    except ValueError as error:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated integers, got {text!r}"
        ) from error


def register(subcommands: argparse._SubParsersAction) -> None:
    """Adds `lego-embed profile`."""
    parser = subcommands.add_parser(
        "profile",
        help="measure every subtask kind's duration and write a JSON cost profile",
        description="Measures EMBED/ATTENTION/FFN/HEAD per prompt length and decode LAYER/HEAD "
        "per context length with the partitioned executor; writes a JSON CostProfile.",
    )
    parser.add_argument("--model", required=True, help="'bundled' or a local HF model folder")
    parser.add_argument("--out", default="cost_profile.json", help="JSON file to write")
    parser.add_argument("--plot", default=None, help="also write a PNG chart here")
    parser.add_argument("--device", default="cpu", help="torch device, e.g. cpu or cuda")
    parser.add_argument("--dtype", default="float32", choices=sorted(DTYPES))
    parser.add_argument("--prompt-lengths", type=_lengths, default="16,32,64,128,256,512")
    parser.add_argument("--context-lengths", type=_lengths, default="16,32,64,128,256,512")
    parser.add_argument(
        "--batch-sizes", type=_lengths, default="2,4", help="decode batch sizes besides 1"
    )
    parser.add_argument("--warmup", type=int, default=2, help="untimed runs per length")
    parser.add_argument("--repeats", type=int, default=5, help="timed runs per length")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.set_defaults(run=_profile)


def _profile(args: argparse.Namespace) -> int:
    import torch

    from lego_embed.model.loading import load_model
    from lego_embed.model.profile import measure_cost_profile

    if args.threads:
        torch.set_num_threads(args.threads)
    loaded = load_model(args.model, device=args.device, dtype=getattr(torch, args.dtype))
    profile = measure_cost_profile(
        loaded,
        prompt_lengths=args.prompt_lengths,
        context_lengths=args.context_lengths,
        batch_sizes=args.batch_sizes,
        warmup=args.warmup,
        repeats=args.repeats,
        progress=lambda message: print(f"  measuring {message}", file=sys.stderr, flush=True),
    )
    profile.save(args.out)
    if args.plot:
        from lego_embed.model.profile_plot import plot_cost_profile

        plot_cost_profile(profile, args.plot)
    print(
        f"{'kind':<10} {'phase':<8} {'tokens':>7} {'context':>8} "
        f"{'median_us':>10} {'p90_us':>10} {'min_us':>10}"
    )
    for e in profile.entries:
        print(
            f"{e.kind:<10} {e.phase:<8} {e.tokens:>7} {e.context_tokens:>8} "
            f"{e.median_us:>10.1f} {e.p90_us:>10.1f} {e.min_us:>10.1f}"
        )
    print(f"wrote {args.out}")
    return 0
