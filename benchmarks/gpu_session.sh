#!/usr/bin/env bash
# What a CPU cannot measure, in one GPU session of about 12 minutes (planned for one H200):
#
#   benchmarks/gpu_session.sh DATA_DIR OUT_DIR          # on the GPU machine
#   SMOKE=1 benchmarks/gpu_session.sh DATA_DIR OUT_DIR  # the same steps at toy sizes on the CPU
#
# DATA_DIR: the 8,303 cats of catfaces64/train (27 MB; bring them along outside the repository's
# tracked files). Needs the project installed with a CUDA build of torch (and pytest for step 1). Each
# step writes its markdown into OUT_DIR and has its own time limit, so one hang cannot eat the
# session; the budget per step is in the comments (compilation of kitty-64 takes 60-90 s):
#   1. the CUDA-only tests: the captured step trains like the eager one, a step never syncs (1 min)
#   2. bench_train variants: default, CUDA graph, compile, all on, batch 512/1024 (4 min)
#   3. the kitty-64 recipe from scratch, predicting v as new runs do (a fine-tune of the shipped
#      weights would keep their ε and its colour casts): CUDA graph, batch 512, a 4-minute
#      budget with the learning rate decaying to its floor at the end (5 min)
#   4. FID/KID and colour casts of the new weights with dpm++sde at 15 (the default) and 25 steps
#      (2,000 cats each) against the held-out cats, beside the shipped weights' (2 min)
set -euo pipefail
usage="usage: $0 DATA_DIR OUT_DIR"
data=${1:?$usage}
out=${2:?$usage}
here=$(cd "$(dirname "$0")" && pwd)
repo=$(dirname "$here")
py=${PYTHON:-python}
mkdir -p "$out"
if [[ -n "${SMOKE:-}" ]]; then
  device=cpu; preset=kitty-64; train=(--quick); minutes=0.2; batch=4; samples=(--quick); limit=600
else
  device=cuda; preset=kitty-64; minutes=4; batch=512; limit=420
  train=(--device cuda --presets kitty-64 --steps 30 --warmup 5 --only default +cuda_graph +compile "all on")
  samples=(--device cuda --data "$data" --samplers dpm++sde --steps 15 --samples 2000 --batch 500)
  nvidia-smi -L
fi

step() {  # step NAME SECONDS COMMAND...: run with a time limit, keep its output, go on if it fails
  local name=$1 seconds=$2
  shift 2
  echo "== $name (limit ${seconds} s)"
  if timeout "$seconds" "$@" 2>&1 | tee "$out/$name.md"; then echo "== $name: done"; else echo "== $name: FAILED or timed out"; fi
}

step 1-cuda-tests 120 "$py" -m pytest -q "$repo/tests/test_trainer.py" -k "cuda or graph or sync"
step 2-bench-train "$limit" "$py" "$here/bench_train.py" "${train[@]}"
step 3-recipe "$limit" "$py" "$here/train_recipe.py" --data "$data" --out "$out/recipe" --preset "$preset" \
  --minutes "$minutes" --batch-size "$batch" $([[ $device == cuda ]] && echo --cuda-graph) --device "$device"
step 4a-quality-new 240 "$py" "$here/bench_steps.py" --checkpoint "$out/recipe/$preset.safetensors" --cache "$out/fid" "${samples[@]}"
step 4b-quality-shipped 240 "$py" "$here/bench_steps.py" --checkpoint "$repo/assets/kitty-64.safetensors" --cache "$out/fid" "${samples[@]}"
echo "results in $out"
