"""Train the demo causal LM (recipes/models/tiny-lm/): a ~0.4M-parameter Llama over bytes
(ByT5 tokenizer, no files needed) on one domain of the demo data, deterministically on CPU.

    HF_HUB_OFFLINE=1 .venv/bin/python scripts/train_demo_lm.py        # ~1-2 min on 2 cores

Default domain: the politics target (recipes/data/target_politics.jsonl), so the demo recipes
can rank pool examples by how much they look like it (low perplexity). The output (~1.5 MB,
float32 safetensors) is committed; rerunning gives the same weights on the same machine.
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=ROOT / "recipes/data/target_politics.jsonl")
    parser.add_argument("--text", default="text", help="column holding the text")
    parser.add_argument("--out", type=Path, default=ROOT / "recipes/models/tiny-lm")
    parser.add_argument("--steps", type=int, default=400)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    import torch
    from transformers import ByT5Tokenizer, LlamaConfig, LlamaForCausalLM

    torch.manual_seed(args.seed)
    torch.set_num_threads(1)  # fixed reduction order: the same weights on every rerun
    torch.use_deterministic_algorithms(True)
    texts = [json.loads(line)[args.text] for line in args.data.read_text(encoding="utf-8").splitlines() if line]
    tok = ByT5Tokenizer()
    stream = [i for t in texts for i in tok(t)["input_ids"]]  # bytes + </s> after each text
    data = torch.tensor(stream, dtype=torch.long)
    config = LlamaConfig(vocab_size=len(tok), hidden_size=128, intermediate_size=256, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=512,
                         tie_word_embeddings=True, bos_token_id=None, eos_token_id=tok.eos_token_id,
                         pad_token_id=tok.pad_token_id)
    model = LlamaForCausalLM(config)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.1, betas=(0.9, 0.95))
    block, batch, warmup = 128, 32, 20
    gen = torch.Generator().manual_seed(args.seed)
    model.train()
    for step in range(args.steps):
        lr = 3e-3 * min(1.0, (step + 1) / warmup) * 0.5 * (1 + math.cos(math.pi * step / args.steps))
        for group in opt.param_groups:
            group["lr"] = lr
        starts = torch.randint(0, len(data) - block - 1, (batch,), generator=gen)
        x = torch.stack([data[s: s + block] for s in starts.tolist()])
        loss = model(input_ids=x, labels=x).loss
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        if step % 50 == 0 or step == args.steps - 1:
            print(f"step {step:4d}  loss {loss.item():.3f}  lr {lr:.2e}")
    model.eval()
    args.out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(args.out)
    tok.save_pretrained(args.out)
    (args.out / "README.md").write_text(
        f"# tiny-lm\n\nDemo causal LM for selectkit: Llama, {model.num_parameters():,} parameters, byte-level "
        f"(ByT5) tokenizer, trained by `scripts/train_demo_lm.py` for {args.steps} steps on "
        f"`{args.data.relative_to(ROOT) if args.data.is_relative_to(ROOT) else args.data}` (seed {args.seed}).\n")
    print(f"saved {args.out} ({sum(f.stat().st_size for f in args.out.iterdir()) / 1e6:.2f} MB)")


if __name__ == "__main__":
    main()
