#!/usr/bin/env bash
# Reproduce assets/kitty-64.safetensors: train the kitty-64 preset on a folder of cat faces for a
# fixed wall-clock budget, export the EMA weights as fp16 safetensors and draw a check grid.
#
#   assets/train-kitty-64.sh DATA_DIR OUT_DIR [MINUTES]
#
# OUT_DIR receives kitty-64.safetensors and check-grid/grid-0.png (64 cats, seeds 0-63). The
# training run itself is kept under $KITTYTERM_HOME (default: OUT_DIR/home), so it can be resumed
# with the same `kittyterm train` line. Set KITTYTERM to run another kittyterm command (for
# example "python -m kittyterm" from a source checkout).
set -euo pipefail
usage="usage: $0 DATA_DIR OUT_DIR [MINUTES]"
data=${1:?$usage}
out=${2:?$usage}
minutes=${3:-9}
kittyterm=${KITTYTERM:-kittyterm}
mkdir -p "$out"
export KITTYTERM_HOME=${KITTYTERM_HOME:-$out/home}
checkpoint="$KITTYTERM_HOME/data/runs/kitty-64/checkpoint.safetensors"

$kittyterm train --preset kitty-64 --data "$data" --minutes "$minutes" --batch-size 256 --compile --run kitty-64 --fresh
$kittyterm export --checkpoint "$checkpoint" --out "$out/kitty-64.safetensors"
$kittyterm sample --checkpoint "$out/kitty-64.safetensors" -n 64 --seed 0 --grid --out "$out/check-grid"
