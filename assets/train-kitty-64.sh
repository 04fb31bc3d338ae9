#!/usr/bin/env bash
# Train the kitty-64 preset on a folder of cat faces for a fixed wall-clock budget with the
# budget-aware recipe and export the EMA weights as fp16 safetensors, then draw a check grid.
#
#   assets/train-kitty-64.sh DATA_DIR OUT_DIR [MINUTES] [INIT]
#
# INIT: the weights the run starts from (default: the shipped assets/kitty-64.safetensors, so a
# run continues where the shipped model stopped; "none" starts from scratch). The recipe
# (benchmarks/train_recipe.py): warm-up, a flat learning rate, then a decay to 1 % of it over the
# last 20 % of the budget; the power-function EMA; batch 512 with the rate scaled by √2; on a GPU
# the whole step is captured in a CUDA graph. OUT_DIR receives checkpoint.safetensors (the
# training state), kitty-64.safetensors (the weights) and check-grid/ (64 cats, seeds 0-63).
# Set KITTYTERM to run another kittyterm command (for example "python -m kittyterm").
set -euo pipefail
usage="usage: $0 DATA_DIR OUT_DIR [MINUTES] [INIT]"
data=${1:?$usage}
out=${2:?$usage}
minutes=${3:-9}
here=$(cd "$(dirname "$0")" && pwd)
init=${4:-$here/kitty-64.safetensors}
kittyterm=${KITTYTERM:-kittyterm}
python=${PYTHON:-python}
mkdir -p "$out"
options=(--data "$data" --out "$out" --preset kitty-64 --minutes "$minutes" --batch-size 512)
[[ "$init" != none ]] && options+=(--init "$init")
"$python" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)" && options+=(--cuda-graph)

"$python" "$here/../benchmarks/train_recipe.py" "${options[@]}"
$kittyterm sample --checkpoint "$out/kitty-64.safetensors" -n 64 --seed 0 --grid --out "$out/check-grid"
