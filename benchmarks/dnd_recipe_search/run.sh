#!/usr/bin/env bash
# The CPU recipe search of issue 14 (results/dnd/README.md, "How the CPU recipe was chosen"), as it was run:
# a four-task library, then decoder variants on it, one at a time on 2 CPU cores (about 40 minutes).
set -euo pipefail
cd "$(dirname "$0")"
export HARNESS_DATA_DIR=${HARNESS_DATA_DIR:-../../../shared/data} HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
PY=../../.venv/bin/python
T=arc_easy,boolq,piqa,winogrande
mkdir -p out
$PY lib.py $T 150 50 1e-3 q_proj,v_proj out/libA            # 150 steps at 1e-3, the last 50 saved
$PY libstats.py out/libA $T
for v in tiny tiny+mean wide wide+mean wide1 w64+mean; do
  $PY gen.py out/libA $T $v 300 1e-3
done
$PY gen.py out/libA $T wide+mean 300 1e-3 eval              # the chosen variant, with seen-task accuracy
