"""Train edgemoe's built-in demo model: a small Mixtral on the World English Bible.

The text is public domain and ships in Debian's ``sword-text-web`` (fetched with ``apt-get download``
if it is not installed). The script is resumable: it checkpoints every ``--ckpt-every`` steps into
``--work`` and picks up from there when run again, and it writes a Hugging Face checkpoint
(config.json, model.safetensors, tokenizer.json, MODEL_CARD.md, train_log.jsonl) into ``--out`` at
every checkpoint, so a usable model exists whenever it is stopped.

    pip install -e '.[export]'
    python examples/train_tiny_moe.py --work ~/.cache/edgemoe/train --out edgemoe/assets/tiny-moe \
        --max-minutes 150

Needs torch and transformers (the ``export`` extra); the runtime never does.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import platform
import random
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from edgemoe.data.sword import find_or_fetch_web, read_ztext_module  # noqa: E402

SEED = 1234
HELDOUT_EVERY = 20     # one block of lines in 20 is held out
BLOCK_LINES = 40       # lines per split block (keeps passages contiguous)


def split_corpus(text: str) -> tuple[str, str]:
    """Deterministic train / held-out split by contiguous blocks of lines."""
    lines = text.split("\n")
    train, held = [], []
    for b, i in enumerate(range(0, len(lines), BLOCK_LINES)):
        (held if b % HELDOUT_EVERY == HELDOUT_EVERY - 1 else train).extend(lines[i:i + BLOCK_LINES])
    return "\n".join(train) + "\n", "\n".join(held) + "\n"


def train_tokenizer(train_text: str, vocab_size: int, path: Path):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=["<s>", "</s>", "<pad>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  show_progress=False)
    tok.train_from_iterator(train_text.split("\n"), trainer=trainer)
    tok.save(str(path))
    return tok


def model_config(vocab_size: int, args):
    from transformers import MixtralConfig

    return MixtralConfig(
        vocab_size=vocab_size, hidden_size=args.hidden, intermediate_size=args.intermediate,
        num_hidden_layers=args.layers, num_attention_heads=args.heads,
        num_key_value_heads=args.kv_heads, num_local_experts=args.experts,
        num_experts_per_tok=2, max_position_embeddings=1024, rope_theta=10000.0,
        router_aux_loss_coef=args.aux, output_router_logits=True, tie_word_embeddings=False,
        bos_token_id=0, eos_token_id=1, pad_token_id=2, rms_norm_eps=1e-5)


def batches(ids: np.ndarray, batch: int, seq: int, rng: np.random.Generator):
    while True:
        starts = rng.integers(0, len(ids) - seq - 1, size=batch)
        yield np.stack([ids[s:s + seq + 1] for s in starts])


def heldout_loss(model, ids: np.ndarray, seq: int, max_windows: int) -> float:
    import torch

    model.eval()
    total, count = 0.0, 0
    with torch.no_grad():
        for s in range(0, min(len(ids) - seq - 1, max_windows * seq), seq):
            x = torch.from_numpy(ids[s:s + seq + 1][None].astype(np.int64))
            out = model(input_ids=x[:, :-1], labels=x[:, :-1].clone(), output_router_logits=False)
            total += float(out.loss) * (seq - 1)
            count += seq - 1
    model.train()
    return total / max(count, 1)


def write_card(out: Path, args, state: dict, n_params: int, n_train: int, n_held: int):
    log_tail = state.get("last_eval", {})
    card = f"""# edgemoe tiny-moe (built-in demo model)

A {n_params / 1e6:.1f}M-parameter Mixtral-family model ({args.layers} layers, hidden {args.hidden},
{args.experts} experts of intermediate size {args.intermediate}, top-2 routing, {args.heads} heads /
{args.kv_heads} KV heads), trained from scratch by `examples/train_tiny_moe.py` in the edgemoe repo.

- **Data**: the World English Bible (with Deuterocanon), SWORD module `engWEB2015eb` from Debian's
  `sword-text-web` package. Licence: public domain (the WEB is not copyrighted). OSIS markup and
  footnotes stripped, one paragraph per line.
- **Split**: contiguous blocks of {BLOCK_LINES} lines; every {HELDOUT_EVERY}th block is held out
  (`heldout.txt`, {n_held:,} tokens); the rest trains ({n_train:,} tokens).
- **Tokenizer**: byte-level BPE, vocab {state['vocab_size']}, trained with `tokenizers` on the train split.
- **Training**: seed {SEED}, AdamW (lr {args.lr}, cosine to 10%, warm-up {args.warmup}), batch
  {args.batch} x {args.seq} tokens, router aux loss {args.aux}, torch {state.get('torch', '?')} on
  {platform.machine()} CPU ({os.cpu_count()} cores).
- **Progress**: {state['step']} steps, {state['tokens_seen']:,} tokens seen,
  {state['train_seconds'] / 3600:.2f} h of training.
- **Held-out loss** (best so far; this checkpoint): {log_tail.get('heldout_loss', float('nan')):.4f} nats/token
  (perplexity {math.exp(log_tail.get('heldout_loss', float('nan'))):.2f}) at step {log_tail.get('step', '?')}.
- **Command**: `python examples/train_tiny_moe.py {' '.join(state.get('argv', []))}`

The loss curve is in `train_log.jsonl` (one JSON object per logged step).
"""
    (out / "MODEL_CARD.md").write_text(card)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--work", type=Path, default=Path.home() / ".cache/edgemoe/train")
    p.add_argument("--out", type=Path, default=Path("edgemoe/assets/tiny-moe"))
    p.add_argument("--corpus", type=Path, help="a zText module folder (default: sword-text-web)")
    p.add_argument("--vocab", type=int, default=4096)
    p.add_argument("--hidden", type=int, default=256)
    p.add_argument("--intermediate", type=int, default=512)
    p.add_argument("--layers", type=int, default=6)
    p.add_argument("--heads", type=int, default=8)
    p.add_argument("--kv-heads", type=int, default=4)
    p.add_argument("--experts", type=int, default=8)
    p.add_argument("--aux", type=float, default=0.01)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--seq", type=int, default=256)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--warmup", type=int, default=200)
    p.add_argument("--steps", type=int, default=12000, help="total steps of the cosine schedule")
    p.add_argument("--max-minutes", type=float, default=1e9, help="stop (after a checkpoint) after this")
    p.add_argument("--ckpt-every", type=int, default=100)
    p.add_argument("--eval-every", type=int, default=500)
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args(argv)

    import torch
    from transformers import MixtralForCausalLM
    from tokenizers import Tokenizer

    torch.set_num_threads(args.threads)
    args.work.mkdir(parents=True, exist_ok=True)
    args.out.mkdir(parents=True, exist_ok=True)

    # --- data and tokenizer (deterministic; cached in --work) ---
    tok_path = args.work / "tokenizer.json"
    if not (args.work / "train.txt").exists():
        module = args.corpus or find_or_fetch_web(args.work / "deb")
        train_text, held_text = split_corpus(read_ztext_module(module))
        (args.work / "train.txt").write_text(train_text)
        (args.work / "heldout.txt").write_text(held_text)
    train_text = (args.work / "train.txt").read_text()
    held_text = (args.work / "heldout.txt").read_text()
    tok = Tokenizer.from_file(str(tok_path)) if tok_path.exists() else \
        train_tokenizer(train_text, args.vocab, tok_path)
    train_ids = np.array(tok.encode(train_text).ids, dtype=np.int32)
    held_ids = np.array(tok.encode(held_text).ids, dtype=np.int32)
    print(f"train {len(train_ids):,} tokens, held-out {len(held_ids):,} tokens", flush=True)

    # --- model, optimiser, resume ---
    torch.manual_seed(SEED)
    cfg = model_config(tok.get_vocab_size(), args)
    model = MixtralForCausalLM(cfg)
    n_params = sum(p.numel() for p in model.parameters())
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, betas=(0.9, 0.95), weight_decay=0.1)
    state = {"step": 0, "tokens_seen": 0, "train_seconds": 0.0, "vocab_size": tok.get_vocab_size(),
             "torch": torch.__version__, "argv": sys.argv[1:] if argv is None else argv}
    ckpt = args.work / "ckpt.pt"
    rng = np.random.default_rng(SEED)
    if ckpt.exists():
        saved = torch.load(ckpt, weights_only=False)
        model.load_state_dict(saved["model"])
        opt.load_state_dict(saved["opt"])
        state.update(saved["state"])
        rng = np.random.default_rng([SEED, state["step"]])
        print(f"resumed at step {state['step']}", flush=True)
    print(f"{n_params / 1e6:.2f}M parameters", flush=True)

    def lr_at(step):
        if step < args.warmup:
            return args.lr * (step + 1) / args.warmup
        frac = min(1.0, (step - args.warmup) / max(1, args.steps - args.warmup))
        return args.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * frac)))

    def save():
        """The resumable checkpoint (model, optimiser, state) in --work."""
        tmp = ckpt.with_suffix(".tmp")
        torch.save({"model": model.state_dict(), "opt": opt.state_dict(), "state": state}, tmp)
        os.replace(tmp, ckpt)

    def export_best():
        """The HF checkpoint in --out, written only when the held-out loss improves: a small corpus
        is memorised after a few epochs, and the best held-out model is the one to ship."""
        model.save_pretrained(args.out, safe_serialization=True)
        tok.save(str(args.out / "tokenizer.json"))
        (args.out / "heldout.txt").write_text(held_text)
        write_card(args.out, args, state, n_params, len(train_ids), len(held_ids))

    log = open(args.out / "train_log.jsonl", "a")
    model.train()
    t_start = time.time()
    it = batches(train_ids, args.batch, args.seq, rng)
    while state["step"] < args.steps:
        t0 = time.time()
        x = torch.from_numpy(next(it).astype(np.int64))
        for g in opt.param_groups:
            g["lr"] = lr_at(state["step"])
        out = model(input_ids=x[:, :-1], labels=x[:, :-1].clone(), output_router_logits=True)
        opt.zero_grad(set_to_none=True)
        out.loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        state["step"] += 1
        state["tokens_seen"] += x.shape[0] * (x.shape[1] - 1)
        state["train_seconds"] += time.time() - t0
        rec = {"step": state["step"], "loss": round(float(out.loss.detach()), 4),
               "aux": round(float(out.aux_loss.detach()), 4) if out.aux_loss is not None else None,
               "lr": lr_at(state["step"] - 1), "tok_per_s": round(x.numel() / (time.time() - t0))}
        improved = False
        if state["step"] % args.eval_every == 0:
            rec["heldout_loss"] = round(heldout_loss(model, held_ids, args.seq, 64), 4)
            improved = rec["heldout_loss"] < state.get("last_eval", {}).get("heldout_loss", 1e9)
            if improved:
                state["last_eval"] = {"step": state["step"], "heldout_loss": rec["heldout_loss"]}
        if state["step"] % 10 == 0 or "heldout_loss" in rec:
            log.write(json.dumps(rec) + "\n")
            log.flush()
            print(json.dumps(rec), flush=True)
        stop = (time.time() - t_start) / 60 > args.max_minutes
        if state["step"] % args.ckpt_every == 0 or stop:
            save()
        if improved:
            export_best()
        if stop:
            print("time limit reached; checkpoint saved", flush=True)
            return
    final = round(heldout_loss(model, held_ids, args.seq, 64), 4)
    save()
    if final < state.get("last_eval", {}).get("heldout_loss", 1e9):
        state["last_eval"] = {"step": state["step"], "heldout_loss": final}
        export_best()
    print(f"done: best held-out loss {state['last_eval']['heldout_loss']} at step "
          f"{state['last_eval']['step']}", flush=True)


if __name__ == "__main__":
    main()
