#!/usr/bin/env python3
"""Builds a random DeepSeek-V3 checkpoint with Hugging Face transformers and records a float64
reference run of it, in the layout `shoal check-model` reads:

    OUT/config.json, OUT/model.safetensors    the checkpoint (float32 weights)
    OUT/reference.safetensors                 input_ids [B, T], logits [B, T, V] f64, loss [1] f64
    OUT/grads.safetensors                     d(loss)/d(parameter), f64, transformers' layout

The weights are rounded to float32 *before* the float64 run, so the reference is exact for the
stored checkpoint. Needs torch and transformers (>= 5); runs on the CPU.

    python3 make_reference.py CONFIG.json OUT [--seed N] [--batch 2] [--seq 24] [--keep-config]

--keep-config copies CONFIG.json over the saved config.json (to test loading of legacy keys such as
rope_scaling, which save_pretrained would rewrite as rope_parameters).
"""
import argparse
import json
import os
import shutil

import torch
from safetensors.torch import save_file
from transformers import (DeepseekV32Config, DeepseekV32ForCausalLM, DeepseekV3Config,
                          DeepseekV3ForCausalLM)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("config")
    ap.add_argument("out")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--seq", type=int, default=24)
    ap.add_argument("--keep-config", action="store_true")
    a = ap.parse_args()

    with open(a.config) as f:
        cfg_dict = json.load(f)
    v32 = cfg_dict.get("model_type") == "deepseek_v32"
    config_cls, model_cls = ((DeepseekV32Config, DeepseekV32ForCausalLM) if v32 else
                             (DeepseekV3Config, DeepseekV3ForCausalLM))
    cfg = config_cls(**{k: v for k, v in cfg_dict.items() if k != "architectures"})
    torch.manual_seed(a.seed)
    model = model_cls(cfg)
    model.set_attn_implementation("eager")
    try:
        model.set_experts_implementation("eager")
    except Exception as e:  # older transformers have only the eager path
        print("note: set_experts_implementation:", e)

    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("norm.weight") or "layernorm" in name:
                p.copy_(1.0 + 0.1 * torch.randn_like(p))
            else:
                p.copy_(0.2 * torch.randn_like(p))
        for name, b in model.named_buffers():
            if name.endswith("e_score_correction_bias"):
                b.copy_(0.5 * torch.randn_like(b))
    model = model.float()
    os.makedirs(a.out, exist_ok=True)
    model.save_pretrained(a.out, safe_serialization=True)
    if a.keep_config:
        shutil.copy(a.config, os.path.join(a.out, "config.json"))

    model = model.double()
    model.train()
    ids = torch.randint(0, cfg.vocab_size, (a.batch, a.seq), generator=torch.Generator().manual_seed(a.seed + 1))
    out = model(input_ids=ids, labels=ids)
    out.loss.backward()
    save_file(
        {"input_ids": ids.contiguous(), "logits": out.logits.detach().contiguous(),
         "loss": out.loss.detach().reshape(1).contiguous()},
        os.path.join(a.out, "reference.safetensors"),
    )
    grads = {n: p.grad.detach().contiguous() for n, p in model.named_parameters() if p.grad is not None}
    save_file(grads, os.path.join(a.out, "grads.safetensors"))
    print(f"{a.out}: loss {out.loss.item():.10g}, {len(grads)} gradients, "
          f"{sum(p.numel() for p in model.parameters())} parameters")


if __name__ == "__main__":
    main()
