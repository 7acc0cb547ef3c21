#!/bin/bash
# cuda_bench.sh: on the GPU machine, in one call, the PyTorch + transformers baseline
# (shared/bench/baseline_hf.py, bf16, sdpa) and shoal's CUDA benchmarks on the same config, then a
# ratio table (shoal / PyTorch; > 1 means shoal is faster).
#
#   bench/cuda_bench.sh DIR [GEMMS] [TRAIN_ARGS...]
# DIR holds baseline_hf.py and moe-2b.json (copies of shared/bench/); bench_cuda_train and
# bench_cuda_decode must be on PATH (source .gpu/env.sh). GEMMS: comma list of the backend's GEMM
# precisions (default f32,bf16). TRAIN_ARGS go to bench_cuda_train (e.g. --seq 1024 --steps 2).
# DECODE_ARGS (environment) go to bench_cuda_decode (e.g. "--reps 1").
# Each part runs under a time limit (BASELINE_S, TRAIN_S, DECODE_S seconds; 300/300/200). Logs
# and results go to $OUT when it is set, else to ./cuda_bench_out.
set -uo pipefail
dir=${1:?usage: cuda_bench.sh DIR [GEMMS] [TRAIN_ARGS...]}
gemms=${2:-f32,bf16}
shift $(($# >= 2 ? 2 : 1))
out=${OUT:-cuda_bench_out}
mkdir -p "$out"
export PYTHONUNBUFFERED=1

date -u +"date %Y-%m-%dT%H:%M:%SZ" | tee "$out/machine.txt"
nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm,clocks.mem --format=csv |
  tee -a "$out/machine.txt"

echo "--- shoal: bench_cuda_train --config $dir/moe-2b.json --gemm $gemms $*"
timeout "${TRAIN_S:-300}" bench_cuda_train --config "$dir/moe-2b.json" --gemm "$gemms" "$@" \
  2>&1 | tee "$out/train.log"
echo "--- shoal: bench_cuda_decode --config $dir/moe-2b.json --gemm $gemms"
timeout "${DECODE_S:-200}" bench_cuda_decode --config "$dir/moe-2b.json" --gemm "$gemms" ${DECODE_ARGS:-} \
  2>&1 | tee "$out/decode.log"
echo "--- PyTorch: python3 baseline_hf.py moe-2b.json sdpa"
(cd "$dir" && timeout "${BASELINE_S:-300}" python3 baseline_hf.py moe-2b.json sdpa) 2>&1 |
  tee "$out/baseline.log"

python3 - "$out" <<'PY'
import json, sys
out = sys.argv[1]
def results(name):
    r = []
    for line in open(f"{out}/{name}.log", errors="replace"):
        if line.startswith("RESULT "):
            r.append(json.loads(line[7:]))
    return r
base = {}
for line in open(f"{out}/baseline.log", errors="replace"):
    line = line.strip()
    if line.startswith("{"):
        try: base.update(json.loads(line))
        except ValueError: pass
train, dec = results("train"), results("decode")
rows = []
bt = base.get("train_tokens_per_s")
for t in train:
    rows.append((f"train step {t['batch']}x{t['seq']} ({t['gemm']} GEMMs, {t.get('attention', 'f32')} attention, {'device-offset' if t.get('device_groups') else t.get('grouped', 'loop')} experts)", t["tokens_per_s"], bt,
                 f"MFU {100*t['mfu']:.1f}%, step {t['step_s']:.3f} s, peak {t['peak_pool_GiB']:.1f} GiB"))
for d in dec:
    for b in (1, 32, 256):
        k = f"prefill_b{b}_tokens_per_s"
        if k in d:
            rows.append((f"prefill b{b} x {d['prompt']} ({d['gemm']} GEMMs, {d.get('attention', 'f32')} attention)", d[k],
                         None, "uncached forward only (PyTorch measures no prefill alone)"))
for d in dec:
    for b in (1, 32, 256):
        k = f"generate_b{b}_tokens_per_s"
        if k in d:
            note = "greedy, prefill included"
            if f"decode_step_b{b}_ms" in d:
                note += (f"; decode step {d[f'decode_step_b{b}_ms']:.1f} ms, of which logits to host "
                         f"{d[f'logits_copy_b{b}_ms']:.1f} ms")
            if f"decode_step_device_b{b}_ms" in d:
                note += (f"; with the tokens drawn on the device {d[f'decode_step_device_b{b}_ms']:.1f} ms "
                         f"(sample_rows greedy {d[f'sample_rows_greedy_b{b}_ms']:.2f} ms)")
            rows.append((f"generate b{b} ({d.get('new_tokens', 128)} new after {d['prompt']}; {d['gemm']} GEMMs)",
                         d[k], base.get(k), note))
if not any(k.startswith("generate_b") for d in dec for k in d):
    for b in (1, 32, 256):
        k = f"generate_b{b}_tokens_per_s"
        if k in base:
            rows.append((f"PyTorch generate b{b} (128 new after 256)", base[k], None, "decode"))
print("\n| measure | shoal tokens/s | PyTorch tokens/s | ratio | note |")
print("|---|---|---|---|---|")
for name, s, b, note in rows:
    ratio = f"{s/b:.3f}" if (b and s) else "-"
    print(f"| {name} | {s:,.0f} | {f'{b:,.0f}' if b else '-'} | {ratio} | {note} |")
for d in dec:
    bw = [(k, v) for k, v in d.items() if k.startswith("attn_b")]
    if bw:
        print(f"\ndecode attention kernel ({d['gemm']} run): " + ", ".join(
            f"{k[6:-5]} {v:,.0f} GB/s ({100 * v / 4200:.0f}% of 4.2 TB/s)" for k, v in bw))
if bt:
    print(f"\nPyTorch train: {bt:,.0f} tokens/s, step {base.get('train_step_s', 0):.3f} s, "
          f"peak {base.get('train_peak_GiB', 0):.1f} GiB (torch {base.get('torch')}, "
          f"transformers {base.get('transformers')})")
PY
