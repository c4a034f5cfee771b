#!/usr/bin/env bash
# The comparison table of docs/results.md: one short training run per variant, all on the same protocol, then one
# evaluation of every run with benchmarks/compare_quality.py.
#
#   bash benchmarks/train_comparison.sh DATASET DISTILLED_TEXT_ENCODER DSSJE_TEXT_ENCODER OUT_DIR [STEPS] [WIDTH]
#
# DATASET: the synthetic set (python -m t2i.datasets synth --out DATASET).
# DISTILLED_TEXT_ENCODER, DSSJE_TEXT_ENCODER: trained char-CNN-RNNs (the char_cnn_rnn/ folder of a
# `--text_encoder char-cnn-rnn` run, with and without `--text_encoder_teacher sentence-transformers/all-MiniLM-L6-v2`);
# rows that compare objectives share the distilled one, so that they differ only in the GAN. WIDTH is ngf = ndf
# (default 32, as the embedded default). MIXED_PRECISION (environment, default no) is passed on: use bf16 only on
# CPUs with bf16 units (AMX / AVX-512 BF16) or GPUs. Rows already trained (a training_summary.json in their folder)
# are skipped, so the script can be stopped and restarted. Several copies can run at once (e.g. two with
# OMP_NUM_THREADS=1 on 2 cores): each row is claimed by the first copy that creates NAME.claim/ (after a kill,
# delete the claims of unfinished rows).
set -euo pipefail
DATASET=$1 DISTILLED=$2 DSSJE=$3 OUT=$4 STEPS=${5:-1000} WIDTH=${6:-32}
mkdir -p "$OUT"
COMMON=(--dataset_name "$DATASET" --resolution 64 --ngf "$WIDTH" --ndf "$WIDTH" --train_batch_size 64 --max_train_steps "$STEPS"
        --mixed_precision "${MIXED_PRECISION:-no}" --channels_last --checkpointing_steps "$STEPS" --validation_epochs 1000
        --report_to none --cache_dir "$OUT/embedding_cache" --seed 0)
DEFAULT=(--text_batch_norm --conditioning projection --mode_seeking_weight 0.5)  # the embedded default's objective

train() {  # NAME, then the flags that make the row
  local name=$1; shift
  [ -f "$OUT/$name/training_summary.json" ] && return
  mkdir "$OUT/$name.claim" 2>/dev/null || return 0  # another copy is training it
  python train_accelerate.py "${COMMON[@]}" --output_dir "$OUT/$name" "$@" > "$OUT/$name.log" 2>&1
}

ROWS=(  # trained in this order, so that the rows the default rests on come first
  "reed|GAN-INT-CLS (Reed: concat D, no text BatchNorm)|--text_encoder_path $DISTILLED"
  "projection|+ text BatchNorm + projection D|--text_encoder_path $DISTILLED --text_batch_norm --conditioning projection"
  "default|+ text BatchNorm + projection D + mode seeking 0.5 (the default)|--text_encoder_path $DISTILLED ${DEFAULT[*]}"
  "mode_seeking_1|+ text BatchNorm + projection D + mode seeking 1.0|--text_encoder_path $DISTILLED --text_batch_norm --conditioning projection --mode_seeking_weight 1.0"
  "matching|+ text BatchNorm + matching loss 1.0 (concat D)|--text_encoder_path $DISTILLED --text_batch_norm --matching_loss_weight 1.0"
  "dssje|+ text BatchNorm + projection D, DS-SJE char-CNN-RNN instead of the distilled one|--text_encoder_path $DSSJE --text_batch_norm --conditioning projection"
  "minilm|+ text BatchNorm + projection D, all-MiniLM-L6-v2 (90 MB) instead of the distilled char-CNN-RNN|--text_batch_norm --conditioning projection"
)
for row in "${ROWS[@]}"; do
  IFS='|' read -r name _ flags <<< "$row"
  read -r -a flag_array <<< "$flags"
  train "$name" "${flag_array[@]}"
done

runs=()
for row in "${ROWS[@]}"; do
  IFS='|' read -r name label _ <<< "$row"
  [ -f "$OUT/$name/training_summary.json" ] || { echo "$name is not finished (yet): no table"; exit 0; }
  runs+=(--run "$label=$OUT/$name")
done
mkdir "$OUT/table.claim" 2>/dev/null || exit 0
python benchmarks/compare_quality.py --dataset "$DATASET" --out "$OUT/quality_table.json" "${runs[@]}"
