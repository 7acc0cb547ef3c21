#!/usr/bin/env python3
"""Loads a checkpoint directory written by shoal with transformers (DeepseekV3ForCausalLM,
float64, eager) and records a reference run for `shoal check-model`: this checks both that
transformers reads shoal's files and that both compute the same function.

    python3 check_hf_load.py CKPT_DIR OUT_DIR [--seed N] [--batch 2] [--seq 16]
"""
import argparse
import os

import torch
from safetensors.torch import save_file
from transformers import AutoModelForCausalLM


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("ckpt")
    ap.add_argument("out")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--seq", type=int, default=16)
    a = ap.parse_args()
    model = AutoModelForCausalLM.from_pretrained(a.ckpt, dtype=torch.float64, attn_implementation="eager")
    try:
        model.set_experts_implementation("eager")
    except Exception as e:
        print("note:", e)
    model.train()
    ids = torch.randint(0, model.config.vocab_size, (a.batch, a.seq),
                        generator=torch.Generator().manual_seed(a.seed))
    out = model(input_ids=ids, labels=ids)
    out.loss.backward()
    os.makedirs(a.out, exist_ok=True)
    save_file({"input_ids": ids.contiguous(), "logits": out.logits.detach().contiguous(),
               "loss": out.loss.detach().reshape(1).contiguous()},
              os.path.join(a.out, "reference.safetensors"))
    grads = {n: p.grad.detach().contiguous() for n, p in model.named_parameters() if p.grad is not None}
    save_file(grads, os.path.join(a.out, "grads.safetensors"))
    print(f"{a.ckpt}: transformers loaded {sum(p.numel() for p in model.parameters())} parameters, "
          f"loss {out.loss.item():.10g}, {len(grads)} gradients")


if __name__ == "__main__":
    main()
