#!/bin/bash
# Gaze train step's XLA-planned temporaries vs T, batched decoder vs memory mode
# (compile only): 224 px, batch 8, fp32, configs/gaze.py:thesis,paper. One JSON per line.
#   bash scripts/memory_vs_t.sh OUT.jsonl [T ...]
set -e
out=${1:?usage: memory_vs_t.sh OUT.jsonl [T ...]}; shift
ts=${@:-3 5 17}
here=$(cd "$(dirname "$0")/.." && pwd)
for t in $ts; do
  for chunk in 0 1; do
    tmp=$(mktemp)
    PYTHONPATH=$here${PYTHONPATH:+:$PYTHONPATH} python "$here/scripts/profile_step.py" \
      --config="$here/configs/gaze.py:thesis,paper" --config.model.timesteps=$t \
      --decoder_chunk=$chunk --num_timed=0 --noeval --nomatmul_peak --json_out="$tmp" > /dev/null
    python -c "import json,sys; r=json.load(open('$tmp')); print(json.dumps({k: r[k] for k in ('timesteps','decoder_chunk','image_size','batch_size','padding','xla_cpu_conv','train_compile','train_xla_memory','load_average_before','load_average_after')}))" >> "$out"
    rm -f "$tmp"
  done
done
