#!/usr/bin/env bash
# The results table of docs/results.md: one short training run per variant, all on the same protocol, then one
# evaluation of every run with benchmarks/compare_quality.py.
#
#   bash benchmarks/train_comparison.sh DATASET TEXT_ENCODER_DIR OUT_DIR [STEPS] [WIDTH]
#
# DATASET: the synthetic set (python -m t2i.data synth --out DATASET).
# TEXT_ENCODER_DIR: a trained char-CNN-RNN (the char_cnn_rnn/ folder of a --text_encoder char-cnn-rnn run), shared
# by every row so that rows differ only in the GAN objective. WIDTH is ngf = ndf (default 16: small, so that all
# rows fit a CPU budget; the embedded default model uses 32). Rows already trained (a training_summary.json in
# their folder) are skipped, so the script can be stopped and restarted. Several copies can run at once (e.g. two
# with OMP_NUM_THREADS=1 on 2 cores): each row is claimed by the first copy that creates NAME.claim/ (after a kill,
# delete the claims of unfinished rows).
set -euo pipefail
DATASET=$1 TEXT_ENCODER=$2 OUT=$3 STEPS=${4:-1000} WIDTH=${5:-16}
mkdir -p "$OUT"
COMMON=(--dataset_name "$DATASET" --resolution 64 --ngf "$WIDTH" --ndf "$WIDTH" --train_batch_size 64 --max_train_steps "$STEPS"
        --mixed_precision bf16 --channels_last --checkpointing_steps "$STEPS" --validation_epochs 1000 --report_to none
        --cache_dir "$OUT/embedding_cache" --seed 0)

train() {  # NAME, then the flags that make the row
  local name=$1; shift
  [ -f "$OUT/$name/training_summary.json" ] && return
  mkdir "$OUT/$name.claim" 2>/dev/null || return 0  # another copy is training it
  python train_accelerate.py "${COMMON[@]}" --output_dir "$OUT/$name" "$@" \
    > "$OUT/$name.log" 2>&1
}

train gan_int_cls --text_encoder_path "$TEXT_ENCODER"
train gan_cls --text_encoder_path "$TEXT_ENCODER" --no-gan_int
train label_smoothing --text_encoder_path "$TEXT_ENCODER" --label_smoothing 0.1
train feature_matching --text_encoder_path "$TEXT_ENCODER" --feature_matching_weight 1.0
train hinge_ma_gp --text_encoder_path "$TEXT_ENCODER" --loss hinge --ma_gp
train aux_class --text_encoder_path "$TEXT_ENCODER" --aux_class_weight 1.0
train ema --text_encoder_path "$TEXT_ENCODER" --use_ema --ema_decay 0.99
train minilm  # the default text encoder

for name in gan_int_cls gan_cls label_smoothing feature_matching hinge_ma_gp aux_class ema minilm; do
  [ -f "$OUT/$name/training_summary.json" ] || { echo "$name is not finished (yet): no table"; exit 0; }
done
mkdir "$OUT/table.claim" 2>/dev/null || exit 0
python benchmarks/compare_quality.py --dataset "$DATASET" --out "$OUT/quality_table.json" \
  --run "GAN-INT-CLS (Reed; the baseline)=$OUT/gan_int_cls" --run "GAN-CLS alone=$OUT/gan_cls" \
  --run "+ one-sided label smoothing 0.1=$OUT/label_smoothing" --run "+ feature matching (weight 1)=$OUT/feature_matching" \
  --run "hinge loss + MA-GP (DF-GAN)=$OUT/hinge_ma_gp" --run "+ auxiliary class loss (TAC-GAN, weight 1)=$OUT/aux_class" \
  --run "+ EMA generator (decay 0.99)=$OUT/ema" --run "all-MiniLM-L6-v2 text encoder=$OUT/minilm"
