#!/usr/bin/env bash
# Model v3 pilots: each generator design trained for the same wall time (not the same steps: the designs differ
# in cost per step), with two seeds, the same data, text encoder, discriminator and losses (on the t2i-v2 recipe,
# with the flags below), then scored the same way by benchmarks/pilots_report.py.
#
#   bash benchmarks/pilots_v3.sh DATASET TEXT_ENCODER OUT_DIR [MINUTES]
#
# DATASET: the synthetic set (python -m t2i.datasets synth). TEXT_ENCODER: a trained char-CNN-RNN folder with a
# joint_image_encoder/ (e.g. pretrained/text_encoder + tokenizer + joint_image_encoder copied into one folder).
# MINUTES (default 8) of training per run, one thread each (OMP_NUM_THREADS=1), bf16 on CPUs with AMX. STEPS=N
# trains N steps instead, for options that cost nothing per step: equal steps are then equal compute, however
# the shared machine's speed drifts between runs.
# FROM_CHECKPOINT=RUN/checkpoint-N makes them continuation pilots: each run resumes its own copy of that
# checkpoint (of a run with the same model) for MINUTES more of GAN steps, evaluated every 1,000 steps on 500 test
# captions (the curve in the run's tensorboard logs), so each option is compared with the recipe itself (its own
# row) continued from the same point: cheaper than training every option from scratch, and it measures what a
# default that has levelled off can still gain. The run's output is the best of its own evaluations.
# Finished runs (a training_summary.json) are skipped, so the script can be stopped and restarted. ONLY=REGEX runs
# only the rows whose name matches (e.g. ONLY='^uncond'), SEEDS='1' only those seeds (default '0 1').
# Then: python benchmarks/compare_quality.py OUT_DIR/*-s* for the oracle table and python -m t2i.evaluation.robustness
# for the free-text and interpolation checks of each run.
set -euo pipefail
DATASET=$1 TEXT_ENCODER=$2 OUT=$3 MINUTES=${4:-8}
mkdir -p "$OUT"
if [ -n "${STEPS:-}" ]; then  # give such runs their own OUT_DIR: finished runs are skipped, whatever their budget
  LIMIT=(--max_train_steps "$STEPS" --checkpointing_steps "$STEPS") BUDGET="$STEPS steps"  # the last checkpoint keeps D, for benchmarks/discriminator_probe.py
else
  LIMIT=(--max_train_steps 100000 --max_train_minutes "$MINUTES" --checkpointing_steps 100000) BUDGET="$MINUTES min"
fi
REPORT=none
if [ -n "${FROM_CHECKPOINT:-}" ]; then
  PAST=$(python -c "import json, sys; print(json.load(open(sys.argv[1]))['gan_seconds'] / 60)" "$FROM_CHECKPOINT/training_state.json")
  LIMIT=(--max_train_steps 1000000 --max_train_minutes "$(python -c "print(round($PAST + $MINUTES, 2))")" --checkpointing_steps 500
         --checkpoints_total_limit 40 --evaluation_steps 1000 --evaluation_samples 500)
  BUDGET="$MINUTES more min from $FROM_CHECKPOINT" REPORT=tensorboard
fi
echo "pilots_v3.sh: each run trains for $BUDGET" >&2
COMMON=(--recipe t2i-v2 --dataset_name "$DATASET" --text_encoder_path "$TEXT_ENCODER" --resolution 64 --ngf 32 --ndf 32 --train_batch_size 64
        "${LIMIT[@]}" --mixed_precision "${MIXED_PRECISION:-bf16}" --channels_last
        --validation_epochs 1000 --report_to "$REPORT" --cache_dir "$OUT/embedding_cache"
        --text_batch_norm --conditioning projection --projection_scales 2 --diff_augment translation cutout --mode_seeking_weight 0.5)
ROWS=(
  "reed_g|Reed's generator (text at the input, transposed convolutions)|--fusion input"
  "affine|text affine in every block|--fusion affine"
  "affine_ca|text affine in every block + conditioning augmentation + L2-normalised text|--fusion affine --conditioning_augmentation --normalize_text"
  "affine_norm|text affine in every block + L2-normalised text (the t2i-v3 recipe)|--fusion affine --normalize_text"
  "uncond|t2i-v3 + StackGAN++'s unconditional term|--fusion affine --normalize_text --unconditional_weight 1"
  "uncond_mix|t2i-v3 + unconditional term + GAN-INT on random mixtures of 3 captions|--fusion affine --normalize_text --unconditional_weight 1 --int_beta random --int_captions 3"
  "mix|t2i-v3 + GAN-INT on random mixtures of 3 captions (the t2i-v4 recipe)|--fusion affine --normalize_text --int_beta random --int_captions 3"
  "mix_msmix|t2i-v4 + mode seeking on the mixtures too|--fusion affine --normalize_text --int_beta random --int_captions 3 --mode_seeking_mixtures"
  "mix_polar|t2i-v4 + polar position channels (r, cos kθ, sin kθ, k ≤ 6) in every G block|--fusion affine --normalize_text --int_beta random --int_captions 3 --polar_harmonics 6"
  "mix_noms|t2i-v4 without mode seeking|--fusion affine --normalize_text --int_beta random --int_captions 3 --mode_seeking_weight 0"
  "mix_sn|t2i-v4 + spectral normalisation in D instead of its BatchNorm|--fusion affine --normalize_text --int_beta random --int_captions 3 --spectral_norm"
  "mix_ms8|t2i-v4 with mode seeking on images average-pooled to 8×8|--fusion affine --normalize_text --int_beta random --int_captions 3 --mode_seeking_scale 8"
  "mix_match|t2i-v4 + AttnGAN-style matching loss through θ|--fusion affine --normalize_text --int_beta random --int_captions 3 --matching_loss_weight 1"
  "v5|t2i-v4 + mode seeking on mixtures + polar channels (the t2i-v5 recipe)|--fusion affine --normalize_text --int_beta random --int_captions 3 --mode_seeking_mixtures --polar_harmonics 6"
  "v5_aa|t2i-v5 + polar harmonics faded out where the pixel grid aliases them|--fusion affine --normalize_text --int_beta random --int_captions 3 --mode_seeking_mixtures --polar_harmonics 6 --polar_antialias"
  "v5_ps3|t2i-v5 + the text match judged on D's 16×16 map too (three projection scales)|--fusion affine --normalize_text --int_beta random --int_captions 3 --mode_seeking_mixtures --polar_harmonics 6 --projection_scales 3"
  "v5_ps4|t2i-v5 + the text match judged on D's 16×16 and 32×32 maps too (four projection scales)|--fusion affine --normalize_text --int_beta random --int_captions 3 --mode_seeking_mixtures --polar_harmonics 6 --projection_scales 4"
  "v5_cf|t2i-v5 + counterfactual negatives: half of GAN-CLS's wrong captions are the right one with one colour, count or shape word swapped|--fusion affine --normalize_text --int_beta random --int_captions 3 --mode_seeking_mixtures --polar_harmonics 6 --counterfactual_negatives 0.5"
  "lean_reed|Reed's generator with the projection D on one scale, GAN-CLS only (no GAN-INT, no mode seeking): a DCGAN-cost step|--fusion input --no-gan_int --mode_seeking_weight 0 --projection_scales 1"
  "lean_norm|the lean step with L2-normalised text and GAN-INT on mixtures of 3 captions (no mode seeking)|--fusion input --normalize_text --int_beta random --int_captions 3 --mode_seeking_weight 0 --projection_scales 1"
  "aff_lean|the lean step with text affines in every block (transposed up-sampling) and L2-normalised text, GAN-CLS only|--fusion affine --transposed_up_blocks --normalize_text --no-gan_int --mode_seeking_weight 0 --projection_scales 1"
  "aff_mixq|aff_lean + GAN-INT on mixtures of 3 captions for a quarter of the batch|--fusion affine --transposed_up_blocks --normalize_text --int_beta random --int_captions 3 --int_fraction 0.25 --mode_seeking_weight 0 --projection_scales 1"
  "lean_frag|the lean step with L2-normalised text and caption fragments: a quarter of the right captions are spans of 1-4 of their words|--fusion input --normalize_text --fragment_captions 0.25 --no-gan_int --mode_seeking_weight 0 --projection_scales 1"
  "frag_xmc|lean_frag + XMC-GAN's contrastive term on D's projection scores: each image picks its caption among the batch's 64|--fusion input --normalize_text --fragment_captions 0.25 --no-gan_int --mode_seeking_weight 0 --projection_scales 1 --contrastive_weight 1"
  "frag_xmcd|frag_xmc with the contrastive term for D alone (G learns the sharper check only through D's logit)|--fusion input --normalize_text --fragment_captions 0.25 --no-gan_int --mode_seeking_weight 0 --projection_scales 1 --contrastive_weight 1 --no-contrastive_generator"
  "frag_xmc_ms|frag_xmc + MSGAN's mode seeking (0.5) against the conditional collapse the contrastive term causes|--fusion input --normalize_text --fragment_captions 0.25 --no-gan_int --mode_seeking_weight 0.5 --projection_scales 1 --contrastive_weight 1"
  "xmc_cf|frag_xmc_ms (t2i-v8) with GAN-CLS's wrong text always the counterfactual caption (one colour, count or shape word swapped)|--fusion input --normalize_text --fragment_captions 0.25 --no-gan_int --mode_seeking_weight 0.5 --projection_scales 1 --contrastive_weight 1 --counterfactual_negatives 1.0"
  "xmc_cfx|xmc_cf + that counterfactual as a hard negative in the contrastive term, for D and G (NegCLIP)|--fusion input --normalize_text --fragment_captions 0.25 --no-gan_int --mode_seeking_weight 0.5 --projection_scales 1 --contrastive_weight 1 --counterfactual_negatives 1.0 --contrastive_hard_negatives"
  "xmc_cfx_ex|xmc_cfx, a caption stating two colours of different parts getting them exchanged as its counterfactual (white petals with red edges -> red petals with white edges)|--fusion input --normalize_text --fragment_captions 0.25 --no-gan_int --mode_seeking_weight 0.5 --projection_scales 1 --contrastive_weight 1 --counterfactual_negatives 1.0 --contrastive_hard_negatives --counterfactual_exchange 1.0"
  "xmc_cff|xmc_cfx_ex + G also draws the counterfactual captions of a quarter of the batch, new combinations judged by D for G alone|--fusion input --normalize_text --fragment_captions 0.25 --no-gan_int --mode_seeking_weight 0.5 --projection_scales 1 --contrastive_weight 1 --counterfactual_negatives 1.0 --contrastive_hard_negatives --counterfactual_exchange 1.0 --counterfactual_fakes 0.25"
  "xmc_cff1|xmc_cfx + G draws the counterfactual caption of every row of the batch (no exchange), new combinations judged by D for G alone|--fusion input --normalize_text --fragment_captions 0.25 --no-gan_int --mode_seeking_weight 0.5 --projection_scales 1 --contrastive_weight 1 --counterfactual_negatives 1.0 --contrastive_hard_negatives --counterfactual_fakes 1.0"
  "xmc_cfx_mix|xmc_cfx + GAN-INT on mixtures of 3 captions for a quarter of the batch, with mode seeking on them (the interior of the caption set, as t2i-v5 had)|--fusion input --normalize_text --fragment_captions 0.25 --gan_int --int_beta random --int_captions 3 --int_fraction 0.25 --mode_seeking_mixtures --mode_seeking_weight 0.5 --projection_scales 1 --contrastive_weight 1 --counterfactual_negatives 1.0 --contrastive_hard_negatives"
  "xmc_cfx_df|xmc_cfx + deep fusion: a zero-initialised text affine after every BatchNorm of Reed's generator (FROM_CHECKPOINT a checkpoint grown by python -m t2i.training grow CKPT DIR --deep_fusion)|--fusion input --deep_fusion --normalize_text --fragment_captions 0.25 --no-gan_int --mode_seeking_weight 0.5 --projection_scales 1 --contrastive_weight 1 --counterfactual_negatives 1.0 --contrastive_hard_negatives"
  "xmc_cfx_pl|xmc_cfx, each counterfactual drawn among edits whose word pairs all occur in the training captions, so none is false by a word pair no caption has (no pale white)|--fusion input --normalize_text --fragment_captions 0.25 --no-gan_int --mode_seeking_weight 0.5 --projection_scales 1 --contrastive_weight 1 --counterfactual_negatives 1.0 --contrastive_hard_negatives --counterfactual_plausible"
  "xmc_cfx_near|xmc_cfx_pl, a colour swapped only for one of the 3 allowed colours nearest it (yellow -> orange, peach or pink), hard negatives for the near colours G draws instead|--fusion input --normalize_text --fragment_captions 0.25 --no-gan_int --mode_seeking_weight 0.5 --projection_scales 1 --contrastive_weight 1 --counterfactual_negatives 1.0 --contrastive_hard_negatives --counterfactual_plausible --counterfactual_near_colors 3"
  "v5_hn8|t2i-v5 + hard negatives: the closest of 8 other-class captions as GAN-CLS's wrong text|--fusion affine --normalize_text --int_beta random --int_captions 3 --mode_seeking_mixtures --polar_harmonics 6 --hard_negatives 8"
)
for seed in ${SEEDS:-0 1}; do
  for row in "${ROWS[@]}"; do
    IFS='|' read -r name _ flags <<< "$row"
    [[ "$name" =~ ${ONLY:-.} ]] || continue
    run="$OUT/$name-s$seed"
    [ -f "$run/training_summary.json" ] && continue
    resume=()
    if [ -n "${FROM_CHECKPOINT:-}" ]; then
      [ -d "$run/$(basename "$FROM_CHECKPOINT")" ] || { mkdir -p "$run"; cp -r "$FROM_CHECKPOINT" "$run/"; }
      resume=(--resume_from_checkpoint latest)
      # From the copied checkpoint itself, the seed draws the run's own data order and noise (otherwise every seed
      # replays the checkpoint's random state, one run); from a later checkpoint of its own, a restart replays exactly.
      latest=$(ls -d "$run"/checkpoint-* | sort -V | tail -1)
      [ "$(basename "$latest")" = "$(basename "$FROM_CHECKPOINT")" ] && resume+=(--reseed_on_resume)
    fi
    # shellcheck disable=SC2086
    OMP_NUM_THREADS=${OMP_NUM_THREADS:-1} python train_accelerate.py "${COMMON[@]}" $flags --seed "$seed" --output_dir "$run" "${resume[@]}" > "$run.log" 2>&1
  done
done
