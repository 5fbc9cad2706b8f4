#!/usr/bin/env bash
# The 5-task study behind the README tables: LoRA and L-LoRA (module and network scope) for each task,
# trained from the CLI with recipes/glue-study.yaml and scored on the full GLUE dev sets; L-LoRA runs are also
# scored through their plain-LoRA export (--nonlinear). Runs already finished are skipped.
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
  train "$task-l-lora-module" --task "$task" --adapter l-lora --linearize module
  train "$task-l-lora-network" --task "$task" --adapter l-lora --linearize network
  fusekit eval "$OUT/$task-l-lora-module" "$OUT/$task-l-lora-network" --nonlinear --data "$DATA"
done
python benchmarks/study_table.py "$OUT"
