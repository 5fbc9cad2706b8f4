#!/usr/bin/env bash
# The 5-task study behind the README tables, per task: LoRA (peft's init, B0 = 0), L-LoRA in module and network
# scope with --lora-init nonzero (both factors train), and L-LoRA module scope with B0 = 0 (A frozen), trained
# from the CLI with recipes/glue-study.yaml and scored on the full GLUE dev sets; L-LoRA runs are also scored
# through their plain-LoRA export (--nonlinear). Runs already finished are skipped.
#   bash benchmarks/glue_study.sh [OUT_DIR]        (DATA=../shared/glue by default)
set -euo pipefail
OUT=${1:-runs/study}
DATA=${DATA:-../shared/glue}
TASKS=${TASKS:-"sst2 rte mrpc cola stsb"}

train() {  # name, then fusekit train flags
  local name=$1; shift
  [ -f "$OUT/$name/config.yaml" ] || fusekit train recipes/glue-study.yaml --data "$DATA" --out "$OUT/$name" "$@"
}

for task in $TASKS; do
  train "$task-lora" --task "$task" --adapter lora
  train "$task-l-lora-module" --task "$task" --adapter l-lora --linearize module --lora-init nonzero
  train "$task-l-lora-network" --task "$task" --adapter l-lora --linearize network --lora-init nonzero
  train "$task-l-lora-module-b0" --task "$task" --adapter l-lora --linearize module
  fusekit eval "$OUT/$task-l-lora-module" "$OUT/$task-l-lora-network" --nonlinear --data "$DATA"
done
python benchmarks/study_table.py "$OUT"
