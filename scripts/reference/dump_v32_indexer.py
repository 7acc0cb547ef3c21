#!/usr/bin/env python3
"""Debug aid: prints transformers' DeepseekV32 indexer/attention source and the indexer's top-k
selections for a checkpoint's reference input_ids (JSON to OUT).

    python3 dump_v32_indexer.py CKPT_DIR OUT.json
"""
import inspect
import json
import sys

import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM
from transformers.models.deepseek_v32 import modeling_deepseek_v32 as mod

ckpt, out = sys.argv[1], sys.argv[2]
print(inspect.getsource(mod.DeepseekV32Indexer.forward))
print(inspect.getsource(mod.DeepseekV32Attention.forward))
model = AutoModelForCausalLM.from_pretrained(ckpt, dtype=torch.float64, attn_implementation="eager")
try:
    model.set_experts_implementation("eager")
except Exception as e:
    print("note:", e)
ids = load_file(f"{ckpt}/reference.safetensors")["input_ids"]
captured = {}
for i, layer in enumerate(model.model.layers):
    def hook(m, args, kwargs, output, i=i):
        captured[i] = output.tolist() if torch.is_tensor(output) else [o.tolist() for o in output if torch.is_tensor(o)]
    layer.self_attn.indexer.register_forward_hook(hook, with_kwargs=True)
with torch.no_grad():
    model(input_ids=ids)
json.dump(captured, open(out, "w"))
print("layers captured:", list(captured))
