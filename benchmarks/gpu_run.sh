#!/usr/bin/env bash
# One prepared run of t2i on a CUDA machine, in at most about 9 minutes: install, CUDA tests, training speed,
# a short training run of the default recipe, its evaluation. Everything it measures lands in one folder.
#
#   bash benchmarks/gpu_run.sh OUT_DIR [--smoke]
#
# Environment:
#   WHEELS=DIR       wheels prepared in advance for a machine without network (pip download -r requirements.txt
#                    -d DIR, minus torch): what is missing is installed from there, the installed torch is kept.
#   TRAIN_MINUTES=5  wall time of the training run; SPEED_BATCHES="64 256 1024 4096" batches for the speed sweep.
# --smoke runs every stage with tiny settings, on the CPU if there is no GPU (CI runs it: tests/test_gpu_run.py).
#
# OUT_DIR then holds: environment.json, cuda_tests.log, train_speed_*.json, model/ (a pretrained-style pipeline
# folder), evaluation.json/.md, robustness.json, samples.png, interpolation.png and summary.json with every figure.
set -euo pipefail
OUT=${1:?usage: gpu_run.sh OUT_DIR [--smoke]}
SMOKE=0; if [ "${2:-}" = "--smoke" ]; then SMOKE=1; fi
cd "$(dirname "$0")/.."
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
started=$(date +%s)
stage() { echo "[$(( $(date +%s) - started )) s] $*"; }

# 1. Install what is missing, from prepared wheels; never replace the machine's torch.
if ! python -c "import diffusers, datasets, accelerate, gradio, t2i" 2>/dev/null; then
  stage "installing from ${WHEELS:-PyPI}"
  grep -vE '^(torch==|-e )' requirements.txt > "$OUT/requirements-no-torch.txt"
  if [ -n "${WHEELS:-}" ]; then
    pip install -q --no-index --find-links "$WHEELS" -r "$OUT/requirements-no-torch.txt"
  else
    pip install -q -r "$OUT/requirements-no-torch.txt"
  fi
  pip install -q --no-deps --no-build-isolation -e .
fi
python - > "$OUT/environment.json" <<'EOF'
import json, os, torch
print(json.dumps({"torch": torch.__version__, "cuda": torch.cuda.is_available(),
                  "device": torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu", "cpu_count": os.cpu_count()}))
EOF
HAS_CUDA=$(python -c "import torch; print(int(torch.cuda.is_available()))")
stage "environment: $(cat "$OUT/environment.json")"

# 2. The test suite's CUDA tests (skipped without a GPU).
stage "CUDA tests"
python -m pytest -q -k cuda tests/test_pipeline.py tests/test_training.py > "$OUT/cuda_tests.log" 2>&1 || { tail -30 "$OUT/cuda_tests.log"; exit 1; }
tail -1 "$OUT/cuda_tests.log"

# 3. Training speed: the full GAN-INT-CLS step, ngf = ndf = 64, 64 px, bf16, with and without torch.compile.
if [ "$SMOKE" = 1 ]; then BATCHES="8"; SPEED=(--ngf 8 --ndf 8 --steps 2 --warmup 1 --num_images 64); PRECISION=no
else BATCHES=${SPEED_BATCHES:-"64 256 1024 4096"}; SPEED=(--steps 30 --warmup 10); PRECISION=bf16; fi
if [ "$HAS_CUDA" != 1 ]; then PRECISION=no; fi
for recipe in reed v3; do
  flags=()
  if [ "$recipe" = v3 ]; then  # the t2i-v3 recipe's model and objective
    flags=(--fusion affine --text_batch_norm --conditioning projection --projection_scales 2 --diff_augment translation cutout
           --mode_seeking_weight 0.5)
  fi
  for batch in $BATCHES; do
    for compile in 0 1; do
      if [ "$compile" = 1 ] && [ "$HAS_CUDA" = 0 ]; then continue; fi  # compiling on a CPU costs minutes, measures nothing
      suffix=""; extra=()
      if [ "$compile" = 1 ]; then suffix=_compile; extra=(--torch_compile); fi
      name="train_speed_${recipe}_b${batch}${suffix}"
      stage "$name"
      python benchmarks/train_speed.py "${SPEED[@]}" --batch_size "$batch" --mixed_precision "$PRECISION" --channels_last \
        "${flags[@]}" "${extra[@]}" --out "$OUT/$name.json" > "$OUT/$name.log" 2>&1 || echo "$name failed (see $name.log)"
    done
  done
done

# 4. The synthetic set with every core, then the default recipe for a fixed wall time.
if [ "$SMOKE" = 1 ]; then NUM_IMAGES=200; MINUTES=0.05; TRAIN=(--ngf 8 --ndf 8 --train_batch_size 16 --evaluation_samples 20)
else NUM_IMAGES=8189; MINUTES=${TRAIN_MINUTES:-5}; TRAIN=(--train_batch_size 64 --evaluation_samples 500); fi
stage "synthetic set ($NUM_IMAGES images)"
[ -f "$OUT/data/README.md" ] || python -m t2i.datasets synth --out "$OUT/data" --num-images "$NUM_IMAGES" > "$OUT/synth.log" 2>&1
stage "training the default recipe for $MINUTES min"
python train_accelerate.py --dataset_name "$OUT/data" --text_encoder_path pretrained --output_dir "$OUT/model" \
  --max_train_steps 1000000 --max_train_minutes "$MINUTES" --evaluation_steps 500 --checkpointing_steps 1000 \
  --mixed_precision "$PRECISION" --channels_last --report_to none --cache_dir "$OUT/embedding_cache" "${TRAIN[@]}" \
  > "$OUT/train.log" 2>&1 || { tail -30 "$OUT/train.log"; exit 1; }
rm -rf "$OUT"/model/checkpoint-* "$OUT/model/best_generator"  # the pipeline folder alone comes back

# 5. Evaluation, free-text and interpolation checks, a sample grid and an interpolation strip.
SAMPLES=$([ "$SMOKE" = 1 ] && echo 50 || echo 2000)
stage "evaluation ($SAMPLES samples)"
python -m t2i.evaluation --model "$OUT/model" --dataset "$OUT/data" --num-samples "$SAMPLES" --out "$OUT/evaluation.json" \
  --sample_grid "$OUT/samples.png" > "$OUT/evaluation.log" 2>&1 || { tail -30 "$OUT/evaluation.log"; exit 1; }
stage "robustness checks"
python -m t2i.evaluation.robustness --model "$OUT/model" --out "$OUT/robustness.json" --strip "$OUT/interpolation.png" \
  > "$OUT/robustness.log" 2>&1 || { tail -30 "$OUT/robustness.log"; exit 1; }
rm -rf "$OUT/data" "$OUT/embedding_cache"

python - "$OUT" <<'EOF'
import json, sys
from pathlib import Path
out = Path(sys.argv[1])
summary = {"environment": json.loads((out / "environment.json").read_text()), "train_speed": {}}
for file in sorted(out.glob("train_speed_*.json")):
    report = json.loads(file.read_text())
    summary["train_speed"][file.stem] = {k: report[k] for k in ("images_per_second", "ms_per_step", "fraction_outside_forward_backward")}
evaluation = json.loads((out / "evaluation.json").read_text())
summary["evaluation"] = {"agreement": evaluation["agreement_generated"], "fd_ratio": evaluation["frechet_distance"]["ratio"],
                         "diversity_ratio": evaluation["diversity"]["ratio"]}
robustness = json.loads((out / "robustness.json").read_text())
summary["free_text_passed"] = f"{robustness['free_text']['passed']} / {robustness['free_text']['total']}"
summary["interpolation_passed"] = f"{robustness['interpolation']['passed']} / {robustness['interpolation']['total']}"
summary["training"] = json.loads((out / "model" / "training_summary.json").read_text())["training_steps"]
(out / "summary.json").write_text(json.dumps(summary, indent=2))
print(json.dumps(summary, indent=2))
EOF
stage "done: $OUT"
