"""Trains the bundled NPC model: a 16-layer Llama that picks combat actions like the expert policy
and says a persona bark while doing them.

1. generates combat situations (lego_embed.tasks.combat) labelled by the noisy expert; half of
   them also carry the persona's bark for the situation and the labelled action
   (lego_embed.tasks.combat.lines), after the action and the output spec's separator;
2. trains a BPE tokenizer on their text with `tokenizers`;
3. trains a Llama-architecture causal LM on CPU (fixed seed, progress bar, checkpoints it resumes
   from: re-run the same command after an interruption);
4. writes config, safetensors weights and tokenizer to lego_embed/assets/npc_model/.

Usage: python tools/train_npc_model.py [--steps 4000] [--out DIR] [--work DIR] [--init-from DIR]
With --init-from, training continues from an earlier model folder of the same shape: its
decoder layers are copied, and so are the embedding rows of every token both vocabularies
have (the new tokenizer is trained on the new texts; tokens only it has start random).
`lego-embed eval --model bundled` then measures held-out agreement with the expert and the
share of barks the corpus checker judges right.
"""

from __future__ import annotations

import argparse
import json
import math
import random
import time
from pathlib import Path

import torch
from tqdm import tqdm
from transformers import LlamaConfig, LlamaForCausalLM

from lego_embed.model.tokenizer import Tokenizer
from lego_embed.npc.output_spec import ANSWER_PREFIX, SAY_SEPARATOR
from lego_embed.tasks.combat.lines import line_for
from lego_embed.tasks.combat.policy import expert_action, noisy_expert_action, random_situation
from lego_embed.tasks.combat.prompt import build_prompt
from lego_embed.tasks.combat.state import validate_state
from lego_embed.tasks.combat.tokenizer import train_npc_tokenizer

REPO_ROOT = Path(__file__).resolve().parents[1]
ANSWER_LOSS_WEIGHT = 4.0
LINE_SHARE = 0.5


def make_examples(
    count: int, seed: int, noisy: bool, line_share: float = LINE_SHARE
) -> list[tuple[str, str, str | None]]:
    """(prompt, action, bark or None) triples labelled by the noisy (training) or deterministic
    expert; a `line_share` of them carry the bark for the situation and the labelled action."""
    rng = random.Random(seed)
    examples = []
    for _ in range(count):
        state = validate_state(random_situation(rng))
        action = noisy_expert_action(state, rng) if noisy else expert_action(state)
        line = line_for(state, action) if rng.random() < line_share else None
        examples.append((build_prompt(state), action, line))
    return examples


def answer_text(action: str, line: str | None) -> str:
    """What follows the prompt: the action, then (with a bark) the separator and the bark."""
    text = ANSWER_PREFIX + action
    return text if line is None else f"{text}{SAY_SEPARATOR} {line}"


def model_config(tokenizer: Tokenizer, layers: int, hidden: int) -> LlamaConfig:
    return LlamaConfig(
        vocab_size=tokenizer.vocab_size,
        hidden_size=hidden,
        intermediate_size=3 * hidden,
        num_hidden_layers=layers,
        num_attention_heads=hidden // 32,
        num_key_value_heads=hidden // 64,
        max_position_embeddings=128,
        rms_norm_eps=1e-5,
        tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )


def encode(tokenizer, examples: list[tuple[str, str, str | None]]) -> list[tuple[list[int], int]]:
    """Token ids of prompt + answer + EOS, and where the answer starts. The answer's parts are
    encoded separately, exactly as the output spec's sampler forces and reads them."""
    encoded = []
    for prompt, action, line in examples:
        prompt_ids = tokenizer.encode(prompt)
        answer_ids = tokenizer.encode(ANSWER_PREFIX + action, add_special_tokens=False)
        if line is not None:
            answer_ids += tokenizer.encode(SAY_SEPARATOR, add_special_tokens=False)
            answer_ids += tokenizer.encode(" " + line, add_special_tokens=False)
        encoded.append((prompt_ids + answer_ids + [tokenizer.eos_token_id], len(prompt_ids)))
    return encoded


def batch_tensors(batch: list[tuple[list[int], int]], pad_id: int):
    """input ids, attention mask, next-token targets and per-target loss weights."""
    width = max(len(ids) for ids, _ in batch)
    input_ids = torch.full((len(batch), width), pad_id)
    mask = torch.zeros((len(batch), width), dtype=torch.long)
    weights = torch.zeros((len(batch), width - 1))
    for row, (ids, answer_start) in enumerate(batch):
        input_ids[row, : len(ids)] = torch.tensor(ids)
        mask[row, : len(ids)] = 1
        weights[row, : len(ids) - 1] = 1.0
        weights[row, answer_start - 1 : len(ids) - 1] = ANSWER_LOSS_WEIGHT
    return input_ids, mask, input_ids[:, 1:], weights


def warm_start(model, tokenizer, folder: Path) -> int:
    """Copies an earlier model's weights into `model` (see the module docstring); returns how
    many embedding rows were carried over."""
    previous = LlamaForCausalLM.from_pretrained(folder)
    old_vocab = Tokenizer.from_folder(folder).backend.get_vocab()
    state = {k: v for k, v in previous.state_dict().items() if "embed_tokens" not in k
             and "lm_head" not in k}
    missing, _ = model.load_state_dict(state, strict=False)
    if any("embed_tokens" not in k and "lm_head" not in k for k in missing):
        raise SystemExit(f"{folder} is not the same shape as the model to train: {missing}")
    old_rows = previous.get_input_embeddings().weight.detach()
    rows = model.get_input_embeddings().weight
    carried = 0
    with torch.no_grad():
        for token, new_id in tokenizer.backend.get_vocab().items():
            old_id = old_vocab.get(token)
            if old_id is not None:
                rows[new_id] = old_rows[old_id]
                carried += 1
    return carried


def learning_rate(step: int, steps: int, peak: float, warmup: int) -> float:
    if step < warmup:
        return peak * (step + 1) / warmup
    progress = (step - warmup) / max(1, steps - warmup)
    return peak * (0.1 + 0.9 * 0.5 * (1.0 + math.cos(math.pi * progress)))


def greedy_agreement(model, tokenizer, examples: list[tuple[str, str, str | None]]) -> float:
    """Share of prompts whose greedy first answer token is the expert's (a quick training check)."""
    hits = 0
    with torch.no_grad():
        for prompt, answer, _ in examples:
            ids = torch.tensor([tokenizer.encode(prompt)])
            first = tokenizer.encode(ANSWER_PREFIX + answer, add_special_tokens=False)[0]
            hits += int(model(input_ids=ids).logits[0, -1].argmax()) == first
    return hits / len(examples)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=REPO_ROOT / "lego_embed/assets/npc_model")
    parser.add_argument("--work", type=Path, default=REPO_ROOT / "work/npc_train")
    parser.add_argument("--examples", type=int, default=240_000)
    parser.add_argument("--steps", type=int, default=4000)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--layers", type=int, default=16)
    parser.add_argument("--hidden", type=int, default=128)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--vocab", type=int, default=1024)
    parser.add_argument("--seed", type=int, default=1234)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--checkpoint-every", type=int, default=250)
    parser.add_argument("--check-states", type=int, default=400,
                        help="held-out states for the agreement printed at each checkpoint")
    parser.add_argument("--warmup", type=int, default=100, help="learning-rate warm-up steps")
    parser.add_argument("--init-from", type=Path,
                        help="continue from this earlier model folder (same layers and width)")
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    args.work.mkdir(parents=True, exist_ok=True)
    started = time.time()

    examples = make_examples(args.examples, args.seed, noisy=True)
    tokenizer_dir = args.work / "tokenizer"
    if tokenizer_dir.is_dir():
        tokenizer = Tokenizer.from_folder(tokenizer_dir)
    else:
        texts = [p + answer_text(a, line) for p, a, line in examples[:50_000]]
        tokenizer = train_npc_tokenizer(texts, args.vocab)
        tokenizer.save(tokenizer_dir)
    data = encode(tokenizer, examples)
    check = make_examples(args.check_states, args.seed + 7, noisy=False)

    model = LlamaForCausalLM(model_config(tokenizer, args.layers, args.hidden))
    carried = None
    if args.init_from is not None:
        carried = warm_start(model, tokenizer, args.init_from)
        print(f"warm start from {args.init_from}: {carried} of {tokenizer.vocab_size} "
              "embedding rows carried over")
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.01)
    checkpoint_path = args.work / "checkpoint.pt"
    step, log, train_seconds = 0, [], 0.0
    if checkpoint_path.exists():
        checkpoint = torch.load(checkpoint_path, weights_only=False)
        model.load_state_dict(checkpoint["model"])
        optimizer.load_state_dict(checkpoint["optimizer"])
        step, log = checkpoint["step"], checkpoint["log"]
        train_seconds = checkpoint["train_seconds"]
        torch.set_rng_state(checkpoint["torch_rng"])
        print(f"resuming from step {step}")

    batches_per_epoch = len(data) // args.batch
    permutation, permutation_epoch = list(range(len(data))), -1
    model.train()
    progress = tqdm(total=args.steps, initial=step, desc="training", unit="step")
    segment_start = time.time()
    while step < args.steps:
        epoch, index = divmod(step, batches_per_epoch)
        if epoch != permutation_epoch:
            random.Random(args.seed + epoch).shuffle(permutation)
            permutation_epoch = epoch
        rows = permutation[index * args.batch : (index + 1) * args.batch]
        input_ids, mask, targets, weights = batch_tensors(
            [data[r] for r in rows], tokenizer.pad_token_id
        )
        for group in optimizer.param_groups:
            group["lr"] = learning_rate(step, args.steps, args.lr, warmup=args.warmup)
        logits = model(input_ids=input_ids, attention_mask=mask).logits[:, :-1]
        losses = torch.nn.functional.cross_entropy(
            logits.reshape(-1, logits.shape[-1]), targets.reshape(-1), reduction="none"
        )
        loss = (losses * weights.reshape(-1)).sum() / weights.sum()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        step += 1
        progress.update(1)
        progress.set_postfix(loss=f"{loss.item():.3f}")
        if step % args.checkpoint_every == 0 or step == args.steps:
            model.eval()
            agreement = greedy_agreement(model, tokenizer, check)
            model.train()
            train_seconds += time.time() - segment_start
            segment_start = time.time()
            log.append({"step": step, "loss": round(loss.item(), 4), "agreement": agreement})
            progress.write(f"step {step}: loss {loss.item():.3f}, agreement {agreement:.3f}")
            torch.save(
                {"model": model.state_dict(), "optimizer": optimizer.state_dict(), "step": step,
                 "log": log, "torch_rng": torch.get_rng_state(), "train_seconds": train_seconds},
                checkpoint_path,
            )
    progress.close()

    model.eval()
    args.out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(args.out, safe_serialization=True)
    tokenizer.save(args.out)
    summary = {
        "examples": args.examples, "line_share": LINE_SHARE, "steps": args.steps,
        "batch": args.batch, "lr": args.lr,
        "seed": args.seed, "threads": args.threads, "layers": args.layers,
        "warmup": args.warmup, "init_from": None if args.init_from is None else str(args.init_from),
        "embedding_rows_carried": carried,
        "hidden": args.hidden, "vocab": tokenizer.vocab_size,
        "parameters": sum(p.numel() for p in model.parameters()),
        "train_seconds": round(train_seconds, 1),
        "wall_seconds_last_run": round(time.time() - started, 1), "log": log,
    }
    (args.out / "training_log.json").write_text(json.dumps(summary, indent=1))
    print(f"saved to {args.out}")


if __name__ == "__main__":
    main()
