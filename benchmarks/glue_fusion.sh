#!/usr/bin/env bash
# The fusion table: merge the 5 task adapters of a study (benchmarks/glue_study.sh) with each method, choosing
# λ on held-out training examples, then score every merged adapter on the full dev sets (normalized scores).
# LoRA merges in ΔW space and in factor space; L-LoRA in its own (factor) space with its linearized forward.
#   bash benchmarks/glue_fusion.sh [STUDY_DIR]
set -euo pipefail
STUDY=${1:-runs/study}
DATA=${DATA:-../shared/glue}
TASKS=${TASKS:-"sst2 rte mrpc cola stsb"}
SEARCH=(--lambdas "${LAMBDAS:-0.3,0.6,1.0}" --val-examples "${VAL_EXAMPLES:-100}")

fuse() {  # variant space method
  local out="$STUDY/merged/$1-$2-$3" runs=()
  for task in $TASKS; do runs+=("$STUDY/$task-$1"); done
  [ -f "$out/eval.json" ] && return
  fusekit merge "${runs[@]}" --method "$3" --space "$2" "${SEARCH[@]}" --out "$out" --overwrite
  fusekit eval "$out" --data "$DATA"
}

for variant_space in lora:delta-w lora:factors l-lora-module:factors l-lora-module-b0:factors \
                     l-lora-network:factors; do
  for method in task-arithmetic average ties dare; do
    fuse "${variant_space%%:*}" "${variant_space##*:}" "$method"
  done
done
python benchmarks/fusion_table.py "$STUDY/merged"
