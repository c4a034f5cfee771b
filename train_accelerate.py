"""Train a GAN-CLS / GAN-INT-CLS text-to-image generator (Reed et al., ICML 2016) with 🤗 Accelerate.

    accelerate launch train_accelerate.py --dataset_name DATASET --output_dir OUT [--text_encoder char-cnn-rnn]

One script for one CPU, one GPU or many. The text encoder is frozen, so every caption is embedded once (and
cached); the GAN loop itself only sees image tensors and embeddings. Checkpoints are written to a temporary
folder and renamed when complete, so `--resume_from_checkpoint latest` never picks up half a checkpoint, and a
resumed run ends with exactly the weights of an uninterrupted one.
"""

import argparse
import copy
import inspect
import json
import logging
import math
import os
import re
import shlex
import shutil
import sys
import time
from pathlib import Path

import torch
from accelerate import Accelerator
from accelerate.logging import get_logger
from accelerate.utils import ProjectConfiguration, set_seed
from tqdm.auto import tqdm

from t2i import GanClsDiscriminator, GanClsGenerator, GanClsPipeline, ModelCardInfo
from t2i.hub import MODEL_CARD_TAGS, check_before_loading, resolve_pretrained_folder
from t2i.data import TensorBatchLoader, caption_fragments, counterfactual_captions, images_to_uint8, load_captioned_dataset, load_or_build_caption_embeddings, load_size_for
from t2i.diffaugment import DIFF_AUGMENT_POLICIES
from t2i.evaluation import HEADLINE_METRICS, LOWER_IS_BETTER, GeneratorScorer, load_oracle
from t2i.hardware import cpu_has_fast_bf16
from t2i.text_pretraining.joint_embedding import JOINT_IMAGE_ENCODER_FOLDER, load_joint_image_encoder
from t2i.losses import LOSS_TYPES
from t2i.models import CONDITIONINGS, FUSIONS, GROWABLE, check_region_count, standing_batch_norm_
from t2i.pipeline import to_unit_range
from t2i.text_encoders import MINILM_ID, CharCnnRnnConfig, embedding_positions, text_positions, with_position_states
from t2i.text_pretraining import CHAR_CNN_RNN, TextEncoderSpec, prepare_text_encoder
from t2i.training import (
    GanClsObjective, check_resumable, generator_config, list_checkpoints, load_checkpoint, non_finite, publish_folder, save_checkpoint,
    train_step, update_ema,
)

logger = get_logger(__name__)

BEST_GENERATOR_FOLDER = "best_generator"  # in --output_dir: the best-scoring generator so far (--evaluation_steps)

DEFAULT_VALIDATION_PROMPTS = [
    "this flower has five pointed purple petals and a yellow center",
    "a flower with many thin yellow petals surrounding a dark brown disc",
    "the petals are pink with white edges",
    "this flower is red and has round petals",
]


# Defaults for the model and objective flags; any flag given explicitly wins over its recipe.
RECIPES = {
    # Reed et al. (ICML 2016): GAN-INT-CLS, text only at G's input, concatenation in D, ngf = ndf = 64.
    "reed2016": {"fusion": "input", "conditioning_augmentation": False, "normalize_text": False, "text_batch_norm": False,
                 "conditioning": "concat", "projection_scales": 1, "mode_seeking_weight": 0.0, "diff_augment": [],
                 "ngf": 64, "ndf": 64},
    # The v2 embedded default: Reed's generator with text BatchNorm, a projection D and mode seeking.
    "t2i-v2": {"fusion": "input", "conditioning_augmentation": False, "normalize_text": False, "text_batch_norm": True,
               "conditioning": "projection", "projection_scales": 1, "mode_seeking_weight": 0.5, "diff_augment": [],
               "ngf": 32, "ndf": 32},
    # Model v3: text affine in every G block on L2-normalised text with text BatchNorm, a two-scale projection D,
    # DiffAugment (translation, cutout) and mode seeking (docs/results.md, "Model v3"). Conditioning augmentation
    # measured worse in the pilots (its sampled code drowned the text) and stays an option.
    "t2i-v3": {"fusion": "affine", "conditioning_augmentation": False, "normalize_text": True, "text_batch_norm": True,
               "conditioning": "projection", "projection_scales": 2, "mode_seeking_weight": 0.5,
               "diff_augment": ["translation", "cutout"], "ngf": 32, "ndf": 32},
}
# Model v4: t2i-v3's model, with GAN-INT on mixtures of three captions at flat-Dirichlet weights, which trains the
# text codes between captions and near their centroid, where short prompts embed (docs/results.md, pilots round 2).
RECIPES["t2i-v4"] = {**RECIPES["t2i-v3"], "int_beta": None, "int_captions": 3}
# Model v5: t2i-v4, with half of mode seeking's pairs on those mixtures (so prompts off the captions vary with
# the seed) and polar position channels in every G block (a centred flower with a ring and a disc), pilots round 3.
RECIPES["t2i-v5"] = {**RECIPES["t2i-v4"], "mode_seeking_mixtures": True, "polar_harmonics": 6}
# Model v7: the lean step (Reed's generator, GAN-CLS only, a one-scale projection D, DiffAugment: 2.8x the steps of
# t2i-v5 per minute) on L2-normalised text, with caption fragments for a quarter of the right captions, which buy
# back the robustness off the captions that v5's costlier step paid for (docs/results.md, round 7).
RECIPES["t2i-v7"] = {**RECIPES["t2i-v2"], "normalize_text": True, "mode_seeking_weight": 0.0, "gan_int": False,
                     "diff_augment": ["translation", "cutout"], "fragment_captions": 0.25}
# Model v8: t2i-v7 with XMC-GAN's contrastive term on D's projection scores (each image picks its caption among
# the batch's), and MSGAN's mode seeking against the conditional collapse that term causes (docs/results.md, round 8).
RECIPES["t2i-v8"] = {**RECIPES["t2i-v7"], "contrastive_weight": 1.0, "mode_seeking_weight": 0.5}
# Model v10: t2i-v8 with the text in every layer of Reed's generator and in its parts: deep fusion's affines split
# over 3 soft masks (SSA-GAN) and a 4-region output palette whose colours are linear in the text (rounds 12-13).
RECIPES["t2i-v10"] = {**RECIPES["t2i-v8"], "deep_fusion": True, "fusion_masks": 3, "output_palette": 4}
# Model v11: t2i-v10 with G and D reading the caption through 4 attention heads over the char-CNN-RNN's position
# states instead of their mean, which mixes every part's colour (rounds 14-17). Off with a pooled text encoder.
RECIPES["t2i-v11"] = {**RECIPES["t2i-v10"], "text_attention_heads": 4}
DEFAULT_RECIPE = "t2i-v10"  # the embedded default's (v10: its run continued with counterfactual hard negatives, averaged)


def _beta_or_random(value: str) -> float | None:
    if value == "random":
        return None
    try:
        beta = float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number in [0, 1] or 'random', got {value!r}") from None
    if not 0.0 <= beta <= 1.0:  # also refuses NaN
        raise argparse.ArgumentTypeError(f"must be in [0, 1] or 'random', got {value}")
    return beta


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line flags (names follow diffusers' example training scripts); bad values fail here, before any work."""
    parser = argparse.ArgumentParser(description="Train a GAN-CLS / GAN-INT-CLS text-to-image generator.")
    parser.add_argument("--recipe", default=DEFAULT_RECIPE, choices=sorted(RECIPES),
                        help=f"defaults for the model and objective flags (explicit flags win): {DEFAULT_RECIPE} is the "
                             "embedded default's, reed2016 the paper's setup")
    data = parser.add_argument_group("data")
    data.add_argument("--dataset_name", required=True, type=os.path.expanduser, help="Hub dataset id, parquet / save_to_disk folder, or imagefolder")
    data.add_argument("--train_split", default="train")
    data.add_argument("--image_column", default="image")
    data.add_argument("--caption_column", default="captions")
    data.add_argument("--max_train_samples", type=int, default=None, help="use only the first N images (debugging)")
    data.add_argument("--resolution", type=int, default=64, choices=[64, 128])
    data.add_argument("--captions_per_image", type=int, default=1, help="average k caption embeddings per image (Reed: 4)")
    data.add_argument("--cache_dir", type=os.path.expanduser, default=None, help="where caption embeddings are cached")

    text = parser.add_argument_group("text encoder")
    text.add_argument("--text_encoder", default=MINILM_ID, help="'char-cnn-rnn' (trained here first) or a transformers id/path")
    text.add_argument("--text_encoder_path", type=os.path.expanduser, default=None, help="reuse a trained text encoder folder (skips its training)")
    text.add_argument("--text_encoder_steps", type=int, default=3000, help="char-CNN-RNN joint-embedding training steps")
    text.add_argument("--char_cnn_rnn_config", type=json.loads, default={}, help='CharCnnRnnConfig overrides as JSON, e.g. \'{"rnn_type": "gru"}\'')
    text.add_argument("--text_encoder_batch_size", type=int, default=40, help="distinct classes per joint-embedding step")
    text.add_argument("--text_encoder_learning_rate", type=float, default=None, help="for the text encoder's objective and θ; default: 3e-3 (DS-SJE), 1e-3 (distillation; θ: 3e-3)")
    text.add_argument("--text_encoder_teacher", default=None,
                      help="train the char-CNN-RNN to reproduce this sentence encoder (e.g. sentence-transformers/all-MiniLM-L6-v2) "
                           "instead of Reed's DS-SJE: a small encoder that keeps the teacher's reading of unseen attribute combinations")

    model = parser.add_argument_group("model")
    model.add_argument("--ngf", type=int, default=64)
    model.add_argument("--ndf", type=int, default=64)
    model.add_argument("--noise_dim", type=int, default=100)
    model.add_argument("--text_proj_dim", type=int, default=128)
    model.add_argument("--text_batch_norm", action=argparse.BooleanOptionalAction, default=False,
                       help="BatchNorm on the projected text in G and D (puts the small sentence embeddings on the noise's scale); "
                            "with --conditioning_augmentation in D only")
    model.add_argument("--fusion", default="input", choices=FUSIONS,
                       help="where G takes the text: 'input' (Reed: once, before transposed convolutions) or 'affine' "
                            "(up-sampling + 3×3 convolutions with a text-predicted scale and shift in every block)")
    model.add_argument("--conditioning_augmentation", action=argparse.BooleanOptionalAction, default=False,
                       help="StackGAN's conditioning augmentation: G's text code is sampled from N(μ(e), σ(e)²), with --kl_weight")
    model.add_argument("--normalize_text", action=argparse.BooleanOptionalAction, default=False,
                       help="L2-normalise sentence embeddings before G projects them (short prompts and captions on one scale)")
    model.add_argument("--polar_harmonics", type=int, default=0,
                       help="with --fusion affine: polar position channels r, cos kθ, sin kθ (k ≤ K) in every G block (0: none)")
    model.add_argument("--polar_antialias", action=argparse.BooleanOptionalAction, default=False,
                       help="with --polar_harmonics: fade each harmonic out near the centre, where the pixel grid aliases it")
    model.add_argument("--residual_blocks", action=argparse.BooleanOptionalAction, default=False,
                       help="with --fusion affine: a residual second fused 3×3 convolution in every G block, behind a "
                            "zero-initialised gain (ReZero), so a generator without them can be grown into this one")
    model.add_argument("--transposed_up_blocks", action=argparse.BooleanOptionalAction, default=False,
                       help="with --fusion affine: each G block up-samples by a 4×4 stride-2 transposed convolution "
                            "(DCGAN's) instead of nearest + 3×3: under half the multiply-adds, with checkerboard risk")
    model.add_argument("--deep_fusion", action=argparse.BooleanOptionalAction, default=False,
                       help="with --fusion input: a text affine after every BatchNorm of Reed's generator, zero at the "
                            "start (DF-GAN's deep fusion), so a trained Reed generator can be grown into this one")
    model.add_argument("--fusion_masks", type=int, default=0, metavar="K",
                       help="with --deep_fusion: K soft spatial masks per fused layer, predicted from its features, each "
                            "with its own text affine (zero at the start), so parts of the flower can take different "
                            "colours from the caption (SSA-GAN's semantic-spatial fusion with K masks); 0 = off")
    model.add_argument("--output_palette", type=int, default=0, metavar="K",
                       help="with --fusion input: G's last layer also predicts K soft regions, each adding a colour linear in "
                            "the text code (zero at the start) to the RGB before the tanh, so a caption sets each region's "
                            "colour through a linear map; 0 = off")
    model.add_argument("--text_attention_heads", type=int, default=0, metavar="H",
                       help="G and D read the text through H attention heads over a char-CNN-RNN's position states (any "
                            "char-CNN-RNN text encoder; the run saves it with pooling='positions') instead of one pooled embedding, so that "
                            "they can tell which part each colour belongs to (docs/results.md, round 14); 0 = off")
    model.set_defaults(text_positions=0)  # set from the text encoder with --text_attention_heads (recorded with the model)
    model.add_argument("--pretrained_model_name_or_path", default=None,
                       help="a t2i pipeline (folder or Hub repo id) whose generator starts the run instead of random weights "
                            "(fine-tuning; D starts fresh). The model flags must describe the same generator, or the same one "
                            "plus --residual_blocks, --deep_fusion, --fusion_masks or --output_palette (then it is grown: GanClsGenerator.grow_from_). Its text encoder is used "
                            "unless --text_encoder_path is given")
    model.add_argument("--discriminator_from_joint_embedding", action=argparse.BooleanOptionalAction, default=False,
                       help="start D's image path as the text encoder's joint image encoder θ (trained to match images with "
                            "captions) instead of random weights; needs --ndf equal to θ's first width (64 for the shipped one)")
    model.add_argument("--freeze_discriminator_blocks", type=int, default=0, metavar="K",
                       help="with --discriminator_from_joint_embedding: keep D's first K stride-2 blocks (0 to 4 at 64 px, "
                            "5 at 128; default 0: none) fixed at θ's weights and running statistics (FreezeD), so D cannot "
                            "memorise the training images there; with all of them frozen D is a projection head on θ's "
                            "features. A resumed run may change K")
    model.add_argument("--spectral_norm", action=argparse.BooleanOptionalAction, default=False,
                       help="SN-GAN: spectral normalisation of D's layers instead of BatchNorm on its image path")
    model.add_argument("--projection_scales", type=int, default=1,
                       help="with --conditioning projection: judge the text match on this many feature scales (4×4, 8×8, ...)")
    model.add_argument("--projection_regions", type=int, default=0, metavar="K",
                       help="with --conditioning projection: also judge the text match in K soft regions D finds on its 8×8 "
                            "map, each with its own projection of the text, so that each part's colour is checked where "
                            "it is drawn (2 to 16; default 0: off)")

    objective = parser.add_argument_group("objective")
    objective.add_argument("--discriminator_warmup_steps", type=int, default=0,
                           help="update only D for the first N steps (G frozen): with --pretrained_model_name_or_path, a fresh "
                                "D learns to judge the trained G before G follows its gradients")
    objective.add_argument("--loss", default="bce", choices=LOSS_TYPES, help="bce (Reed) or hinge (DF-GAN)")
    objective.add_argument("--gan_int", action=argparse.BooleanOptionalAction, default=True, help="GAN-INT generator terms")
    objective.add_argument("--int_beta", type=_beta_or_random, default=0.5,
                           help="GAN-INT's interpolation weight β (Reed: 0.5), or 'random': flat-Dirichlet weights per row")
    objective.add_argument("--int_captions", type=int, default=2,
                           help="captions each GAN-INT embedding mixes (Reed: 2; more needs --int_beta random)")
    objective.add_argument("--int_fraction", type=float, default=1.0,
                           help="share of the batch's captions that also get a GAN-INT mixture, in (0, 1] (Reed: 1): "
                                "round(F x per-process batch), at least one; each mixture costs a generator pass, and "
                                "--mode_seeking_mixtures pairs at most that many")
    objective.add_argument("--hard_negatives", type=int, default=1,
                           help="GAN-CLS's mismatched caption: the closest to the right one of this many captions of "
                                "other-class images (VSE++'s hard negatives; 1: Reed's random one)")
    objective.add_argument("--counterfactual_negatives", type=float, default=0.0,
                           help="probability that GAN-CLS's mismatched caption is instead the right caption with one colour, "
                                "count or shape word swapped (t2i.data.counterfactual), so D must check each stated value; "
                                "0: never")
    objective.add_argument("--counterfactual_exchange", type=float, default=0.0,
                           help="probability that a caption's counterfactual instead exchanges two of its colour words "
                                "('white petals with red edges' -> 'red petals with white edges'; t2i.data.counterfactual."
                                "exchange_colors), so D must check which part has which colour (needs --counterfactual_negatives "
                                "or --counterfactual_fakes)")
    objective.add_argument("--counterfactual_plausible", action="store_true",
                           help="draw each counterfactual only among edits whose new word pairs all occur in the training "
                                "captions, so few can be told from a real caption by its text alone ('pale white' where no "
                                "caption says it; t2i.data.caption_bigrams; needs --counterfactual_negatives or "
                                "--counterfactual_fakes)")
    objective.add_argument("--counterfactual_near_colors", type=int, default=0, metavar="K",
                           help="swap a colour word only for one of the K allowed colours nearest it in sRGB (CSS values, "
                                "t2i.data.counterfactual.COLOR_RGB: yellow -> orange or peach), hard negatives for the near "
                                "colours G draws instead of the stated one; 0: any colour (needs --counterfactual_negatives "
                                "or --counterfactual_fakes)")
    objective.add_argument("--counterfactual_fakes", type=float, default=0.0,
                           help="share of the batch whose counterfactual caption G also draws, a combination of values no "
                                "training image may have, judged by D for G's loss only (like GAN-INT's interpolations), with "
                                "the contrastive pick among them when --contrastive_weight is on; 0: never")
    objective.add_argument("--fragment_captions", type=float, default=0.0,
                           help="probability that a row's right caption is a span of 1-4 of its words instead "
                                "(t2i.data.fragments: one fixed span per caption, encoded once into --cache_dir; with "
                                "--captions_per_image k the mean of k spans), so G and D also train on short texts such "
                                "as visitors type; 0: never")
    objective.add_argument("--unconditional_weight", type=float, default=0.0,
                           help="StackGAN++'s unconditional real/fake term for D and G, on every fake (needs --conditioning projection)")
    objective.add_argument("--label_smoothing", type=float, default=0.0, help="one-sided: real target = 1 - value")
    objective.add_argument("--feature_matching_weight", type=float, default=0.0)
    objective.add_argument("--ma_gp", action="store_true", help="DF-GAN matching-aware gradient penalty (k=2, p=6)")
    objective.add_argument("--aux_class_weight", type=float, default=0.0, help="TAC-GAN auxiliary class loss weight")
    objective.add_argument("--conditioning", default="concat", choices=CONDITIONINGS,
                           help="how D joins text and image: concat (Reed) or projection (Miyato & Koyama)")
    objective.add_argument("--matching_loss_weight", type=float, default=0.0,
                           help="AttnGAN-style text-image matching loss for G through the frozen joint embedding θ (char-CNN-RNN only)")
    objective.add_argument("--contrastive_weight", type=float, default=0.0,
                           help="XMC-GAN's image-sentence contrastive loss on D's projection scores, for D (real images) and G "
                                "(fakes): each image must pick its caption among the batch's (needs --conditioning projection and a "
                                "batch of 2 or more). The default recipe t2i-v8 sets 1, with --mode_seeking_weight 0.5: without "
                                "mode seeking the term collapses the noise (one image per caption)")
    objective.add_argument("--contrastive_generator", action=argparse.BooleanOptionalAction, default=True,
                           help="--no-contrastive_generator: the contrastive term for D alone, not for G's fakes")
    objective.add_argument("--contrastive_hard_negatives", action=argparse.BooleanOptionalAction, default=False,
                           help="each image's GAN-CLS mismatched caption also joins its contrastive candidates, for D and G; "
                                "with --counterfactual_negatives p it is, with probability p, the right caption with one word "
                                "swapped (NegCLIP's hard negatives), so the pick needs every stated value (needs --contrastive_weight)")
    objective.add_argument("--mode_seeking_weight", type=float, default=0.0,
                           help="MSGAN mode-seeking term: keeps the noise in use when the text conditioning is strong")
    objective.add_argument("--mode_seeking_scale", type=int, default=1,
                           help="average-pool the images by this factor before mode seeking's distance (1: MSGAN's pixels)")
    objective.add_argument("--mode_seeking_mixtures", action=argparse.BooleanOptionalAction, default=False,
                           help="pair half of the mode-seeking images on GAN-INT mixtures, not captions (needs --gan_int)")
    objective.add_argument("--kl_weight", type=float, default=2.0, help="KL weight of conditioning augmentation (StackGAN: 2)")
    objective.add_argument("--diff_augment", nargs="*", default=[], choices=DIFF_AUGMENT_POLICIES,
                           help="DiffAugment policies for every image D sees (translation, cutout; never colour)")
    objective.add_argument("--use_ema", action="store_true", help="keep an EMA generator for sampling and saving")
    objective.add_argument("--ema_decay", type=float, default=0.999)

    optim = parser.add_argument_group("optimisation")
    optim.add_argument("--train_batch_size", type=int, default=64, help="per process")
    optim.add_argument("--num_train_epochs", type=int, default=100)
    optim.add_argument("--max_train_steps", type=int, default=None, help="overrides --num_train_epochs")
    optim.add_argument("--max_train_minutes", type=float, default=None,
                       help="stop (checkpoint, evaluate and save as at the last step) once the GAN steps have taken this long, "
                            "counted over every resume (data loading and text-encoder training excluded): equal budgets for comparisons")
    optim.add_argument("--learning_rate", type=float, default=2e-4, help="G's (and D's, unless --discriminator_learning_rate)")
    optim.add_argument("--discriminator_learning_rate", type=float, default=None,
                       help="D's own learning rate (two time-scale updates, Heusel et al., 2017): e.g. a lower --learning_rate "
                            "for a fine-tuned G, whose fresh Adam state would otherwise move every weight by about the "
                            "learning rate per step, with D's kept at 2e-4")
    optim.add_argument("--adam_beta1", type=float, default=0.5)
    optim.add_argument("--adam_beta2", type=float, default=0.999)
    optim.add_argument("--mixed_precision", default=None, choices=["no", "fp16", "bf16"])
    optim.add_argument("--channels_last", action="store_true")
    optim.add_argument("--torch_compile", action="store_true")
    optim.add_argument("--seed", type=int, default=0)

    run = parser.add_argument_group("run")
    run.add_argument("--output_dir", type=os.path.expanduser, default="gan-cls-flowers")
    run.add_argument("--logging_dir", default="logs", help="relative to --output_dir")
    run.add_argument("--report_to", default="tensorboard", choices=["tensorboard", "none"])
    run.add_argument("--checkpointing_steps", type=int, default=500)
    run.add_argument("--checkpoints_total_limit", type=int, default=None)
    run.add_argument("--resume_from_checkpoint", type=os.path.expanduser, default=None, help="'latest' or a checkpoint folder")
    run.add_argument("--reseed_on_resume", action="store_true",
                     help="draw the data order, noise and augmentation from --seed instead of restoring the checkpoint's "
                          "random state: for a new phase started from another run's checkpoint, so that runs of several "
                          "seeds differ (restored, --seed has no effect after a resume); never for resuming a killed run")
    run.add_argument("--validation_prompts", nargs="+", default=DEFAULT_VALIDATION_PROMPTS)
    run.add_argument("--validation_epochs", type=int, default=5)
    run.add_argument("--evaluation_steps", type=int, default=None,
                     help="every N steps, score the model with the attribute oracle on fixed test captions, and end "
                          "with the best-scoring generator (needs a test split with an 'attributes' column); "
                          "leave it out for no evaluation")
    run.add_argument("--evaluation_metric", default="text_image_agreement_mean",
                     help="the headline metric (higher is better) that picks the best generator")
    run.add_argument("--evaluation_samples", type=int, default=500, help="test captions per evaluation")
    run.add_argument("--push_to_hub", action="store_true")
    run.add_argument("--hub_model_id", default=None)
    run.add_argument("--hub_token", default=None)
    run.add_argument("--hub_private_repo", action="store_true")

    recipe = parser.parse_known_args(argv)[0].recipe
    unset = object()
    parser.set_defaults(**dict.fromkeys(RECIPES[recipe], unset))
    given = {name for name, value in vars(parser.parse_args(argv)).items() if value is not unset}  # typed, not the recipe's
    parser.set_defaults(**RECIPES[recipe])
    args = parser.parse_args(argv)
    # A recipe's refinement of a feature goes off with the feature when the command line turns the feature off
    # (--fusion input drops the recipe's polar channels); typed explicitly, the same conflict is refused below.
    for name, off, feature_off in (("polar_harmonics", 0, args.fusion != "affine"),
                                   ("deep_fusion", False, args.fusion != "input"),
                                   ("fusion_masks", 0, args.fusion != "input" or not args.deep_fusion),
                                   ("output_palette", 0, args.fusion != "input"),
                                   ("mode_seeking_mixtures", False, args.mode_seeking_weight == 0 or not args.gan_int),
                                   ("projection_scales", 1, args.conditioning != "projection"),
                                   ("contrastive_weight", 0.0, args.conditioning != "projection"),
                                   ("projection_regions", 0, args.conditioning != "projection"),
                                   ("int_captions", 2, args.int_beta is not None)):
        if feature_off and name in RECIPES[recipe] and name not in given:
            setattr(args, name, off)
    for name in ("learning_rate", "discriminator_learning_rate", "text_encoder_learning_rate", "max_train_minutes", "kl_weight", "unconditional_weight",
                 "mode_seeking_weight", "matching_loss_weight", "contrastive_weight", "feature_matching_weight", "aux_class_weight"):
        if getattr(args, name) is not None and not math.isfinite(getattr(args, name)):
            parser.error(f"--{name} must be a finite number, got {getattr(args, name)}")
        if getattr(args, name) is not None and abs(getattr(args, name)) > torch.finfo(torch.float32).max:
            parser.error(f"--{name} must be at most {torch.finfo(torch.float32).max:.3g} (fp32's largest number), got {getattr(args, name)}")
    positive = ["train_batch_size", "num_train_epochs", "checkpointing_steps", "validation_epochs", "captions_per_image",
                "ngf", "ndf", "noise_dim", "text_proj_dim", "text_encoder_steps", "text_encoder_batch_size", "hard_negatives"]
    for name in positive:
        if getattr(args, name) < 1:
            parser.error(f"--{name} must be ≥ 1, got {getattr(args, name)}")
    num_blocks = int(math.log2(args.resolution)) - 2
    if not 0 <= args.freeze_discriminator_blocks <= num_blocks:
        parser.error(f"--freeze_discriminator_blocks must be in [0, {num_blocks}] (D's stride-2 blocks at {args.resolution} px), "
                     f"got {args.freeze_discriminator_blocks}")
    if args.freeze_discriminator_blocks and not args.discriminator_from_joint_embedding:
        parser.error("--freeze_discriminator_blocks keeps θ's features fixed in D: it needs --discriminator_from_joint_embedding")
    if args.discriminator_warmup_steps < 0:
        parser.error(f"--discriminator_warmup_steps must be ≥ 0, got {args.discriminator_warmup_steps}")
    for name in ("max_train_steps", "max_train_samples", "checkpoints_total_limit", "evaluation_steps"):
        if getattr(args, name) is not None and getattr(args, name) < 1:
            parser.error(f"--{name} must be ≥ 1 (leave it out for none), got {getattr(args, name)}")
    if args.train_batch_size < 2 and (args.text_batch_norm or args.mode_seeking_weight > 0 or args.contrastive_weight > 0):
        parser.error(f"--train_batch_size {args.train_batch_size}: --text_batch_norm needs more than one caption per batch "
                     "for its statistics, --mode_seeking_weight pairs the batch's first half with second images, and "
                     "--contrastive_weight tells each image apart from the batch's other captions; use --train_batch_size 2 "
                     "or more, or --no-text_batch_norm --mode_seeking_weight 0 --contrastive_weight 0")
    if args.polar_harmonics < 0 or (args.polar_harmonics > 0 and args.fusion != "affine"):
        parser.error(f"--polar_harmonics {args.polar_harmonics}: must be ≥ 0, and > 0 needs --fusion affine")
    if args.polar_antialias and args.polar_harmonics == 0:
        parser.error("--polar_antialias windows the polar channels: it needs --polar_harmonics K > 0")
    for flag in ("residual_blocks", "transposed_up_blocks"):
        if getattr(args, flag) and args.fusion != "affine":
            parser.error(f"--{flag} shapes the text-affine blocks: it needs --fusion affine")
    if args.deep_fusion and args.fusion != "input":
        parser.error("--deep_fusion adds text affines to Reed's generator: it needs --fusion input (--fusion affine has its own)")
    for name in ("fusion_masks", "output_palette", "projection_regions"):
        try:
            check_region_count(f"--{name}", getattr(args, name))
        except ValueError as error:
            parser.error(str(error))
    if args.fusion_masks and not args.deep_fusion:
        parser.error(f"--fusion_masks {args.fusion_masks} makes --deep_fusion's affines spatial: it needs --deep_fusion")
    if args.output_palette and args.fusion != "input":
        parser.error(f"--output_palette {args.output_palette} paints the last layer of Reed's generator: it needs --fusion input")
    # Where the recipe chose concatenation, say so: the command line may not mention --conditioning at all.
    concat_from = "" if "conditioning" in given else f" (--recipe {recipe} sets --conditioning {args.conditioning})"
    if args.projection_scales > 1 and args.conditioning != "projection":
        parser.error(f"--projection_scales {args.projection_scales} needs --conditioning projection{concat_from}")
    if args.projection_regions and args.conditioning != "projection":
        parser.error(f"--projection_regions {args.projection_regions} needs --conditioning projection{concat_from}")
    if not 1 <= args.projection_scales <= (4 if args.resolution == 64 else 5):
        parser.error(f"--projection_scales must be between 1 and {4 if args.resolution == 64 else 5} at {args.resolution} px")
    if args.int_captions < 2 or (args.int_captions > 2 and args.int_beta is not None):
        parser.error(f"--int_captions {args.int_captions}: must be ≥ 2, and > 2 only with --int_beta random")
    if not 0.0 < args.int_fraction <= 1.0:  # NaN fails this too
        parser.error(f"--int_fraction must be in (0, 1], got {args.int_fraction}")
    if args.int_fraction != 1.0 and not args.gan_int:
        parser.error(f"--int_fraction {args.int_fraction} sizes GAN-INT's share of the batch: it needs --gan_int")
    if not args.contrastive_generator and args.contrastive_weight == 0:
        parser.error("--no-contrastive_generator keeps the contrastive term for D alone: it needs --contrastive_weight > 0")
    if args.reseed_on_resume and args.resume_from_checkpoint is None:
        parser.error("--reseed_on_resume draws fresh random streams for a resumed run: it needs --resume_from_checkpoint")
    if args.counterfactual_near_colors < 0:
        parser.error(f"--counterfactual_near_colors must be >= 0 (0: any colour), got {args.counterfactual_near_colors}")
    for flag, on in (("--counterfactual_exchange", args.counterfactual_exchange > 0), ("--counterfactual_plausible", args.counterfactual_plausible),
                     ("--counterfactual_near_colors", args.counterfactual_near_colors > 0)):
        if on and args.counterfactual_negatives == 0 and args.counterfactual_fakes == 0:
            parser.error(f"{flag} shapes the counterfactual captions: it needs --counterfactual_negatives or "
                         "--counterfactual_fakes > 0")
    if args.contrastive_hard_negatives and args.contrastive_weight == 0:
        parser.error("--contrastive_hard_negatives adds candidates to the contrastive term: it needs --contrastive_weight > 0 "
                     "(on by default, off with --conditioning concat, which has no projection scores to compare)")
    if args.contrastive_weight > 0 and args.conditioning != "projection":
        parser.error(f"--contrastive_weight needs --conditioning projection{concat_from} (it scores every image against "
                     "every caption with the projection's matching term)")
    if args.unconditional_weight > 0 and args.conditioning != "projection":
        parser.error(f"--unconditional_weight needs --conditioning projection{concat_from} (its text-free term is the "
                     "unconditional logit)")
    for name in ("counterfactual_negatives", "counterfactual_exchange", "counterfactual_fakes", "fragment_captions"):
        if not 0.0 <= getattr(args, name) <= 1.0:  # NaN fails this too
            parser.error(f"--{name} must be a probability in [0, 1], got {getattr(args, name)}")
    if not 0.0 <= args.label_smoothing < 1.0:
        parser.error(f"--label_smoothing must be in [0, 1), got {args.label_smoothing}")
    if not 0.0 < args.ema_decay < 1.0:
        parser.error(f"--ema_decay must be in (0, 1), got {args.ema_decay}")
    for name in ("learning_rate", "discriminator_learning_rate", "text_encoder_learning_rate", "max_train_minutes"):
        if getattr(args, name) is not None and getattr(args, name) <= 0:
            parser.error(f"--{name} must be > 0, got {getattr(args, name)}")
    for name in ("kl_weight", "feature_matching_weight", "aux_class_weight", "unconditional_weight", "contrastive_weight"):
        if getattr(args, name) < 0:
            parser.error(f"--{name} must be ≥ 0, got {getattr(args, name)}")
    for name in ("adam_beta1", "adam_beta2"):
        if not 0.0 <= getattr(args, name) < 1.0:
            parser.error(f"--{name} must be in [0, 1), got {getattr(args, name)}")
    if not isinstance(args.char_cnn_rnn_config, dict):
        parser.error(f"--char_cnn_rnn_config must be a JSON object, e.g. '{{\"rnn_type\": \"gru\"}}', got {args.char_cnn_rnn_config!r}")
    if args.mode_seeking_scale < 1 or args.resolution % args.mode_seeking_scale:
        parser.error(f"--mode_seeking_scale {args.mode_seeking_scale}: must be ≥ 1 and divide --resolution {args.resolution}")
    if args.mode_seeking_mixtures and not args.gan_int:
        parser.error("--mode_seeking_mixtures pairs images on GAN-INT mixtures: it needs --gan_int")
    if args.mode_seeking_weight == 0 and (args.mode_seeking_mixtures or args.mode_seeking_scale != 1):
        shaping = " and ".join(flag for flag, on in (("--mode_seeking_mixtures", args.mode_seeking_mixtures),
                                                     (f"--mode_seeking_scale {args.mode_seeking_scale}", args.mode_seeking_scale != 1)) if on)
        parser.error(f"{shaping} shape(s) mode seeking: they need --mode_seeking_weight > 0")
    if args.matching_loss_weight < 0 or args.mode_seeking_weight < 0:
        parser.error("--matching_loss_weight and --mode_seeking_weight must be ≥ 0")
    text_folder = args.text_encoder_path
    if text_folder is None and args.pretrained_model_name_or_path is not None and os.path.isdir(args.pretrained_model_name_or_path):
        text_folder = args.pretrained_model_name_or_path  # whose text encoder the run will use
    for flag, on in (("--matching_loss_weight", args.matching_loss_weight > 0),
                     ("--discriminator_from_joint_embedding", args.discriminator_from_joint_embedding)):
        if on and ((text_folder is None and args.text_encoder != "char-cnn-rnn" and args.pretrained_model_name_or_path is None)
                   or (text_folder is not None and not os.path.isdir(os.path.join(text_folder, JOINT_IMAGE_ENCODER_FOLDER)))):
            parser.error(f"{flag} needs a joint embedding's image encoder: train a char-CNN-RNN here "
                         f"(--text_encoder char-cnn-rnn) or give a --text_encoder_path with a {JOINT_IMAGE_ENCODER_FOLDER}/ folder")
    theta_config = Path(text_folder or "", JOINT_IMAGE_ENCODER_FOLDER, "config.json")
    if args.discriminator_from_joint_embedding and text_folder is not None and theta_config.is_file():
        widths = json.loads(theta_config.read_text()).get("channels", [])
        needed = [args.ndf * 2**i for i in range(num_blocks)]
        if list(widths) != needed:
            parser.error(f"--discriminator_from_joint_embedding: θ ({theta_config}) has widths {list(widths)}, a D with "
                         f"--ndf {args.ndf} at {args.resolution} px has {needed}: use --ndf {widths[0] if widths else '?'}")
    if args.text_encoder_teacher is not None and (args.text_encoder != "char-cnn-rnn" or args.text_encoder_path is not None):
        parser.error("--text_encoder_teacher distils into a new char-CNN-RNN: use it with --text_encoder char-cnn-rnn "
                     "and without --text_encoder_path")
    if any(not p.strip() for p in args.validation_prompts):
        parser.error("--validation_prompts must not contain empty prompts")
    path_like = args.dataset_name.startswith((".", "/", "~")) or args.dataset_name.count("/") > 1
    if not os.path.exists(args.dataset_name) and (path_like or not re.fullmatch(r"[\w.-]+/[\w.-]+", args.dataset_name)):
        parser.error(f"--dataset_name {args.dataset_name!r}: no such folder or file, and not a Hub id of the form 'org/name'")
    if args.text_encoder_path is not None and not os.path.isdir(args.text_encoder_path):
        parser.error(f"--text_encoder_path {args.text_encoder_path!r}: no such folder")
    if args.resume_from_checkpoint not in (None, "latest") and not os.path.isdir(args.resume_from_checkpoint):
        parser.error(f"--resume_from_checkpoint {args.resume_from_checkpoint!r}: no such checkpoint folder (or use 'latest')")
    unknown = set(args.char_cnn_rnn_config) - set(inspect.signature(CharCnnRnnConfig).parameters)
    if unknown:
        parser.error(f"--char_cnn_rnn_config: unknown keys {sorted(unknown)}")
    if args.evaluation_metric not in HEADLINE_METRICS:
        parser.error(f"--evaluation_metric {args.evaluation_metric!r}: choose one of {', '.join(HEADLINE_METRICS)}")
    if args.evaluation_samples < 2:
        parser.error(f"--evaluation_samples must be at least 2, got {args.evaluation_samples}")
    if os.path.isfile(args.output_dir):
        parser.error(f"--output_dir {args.output_dir!r} is a file")
    if args.text_attention_heads < 0:
        parser.error(f"--text_attention_heads must be ≥ 0 (0: Reed's pooled embedding), got {args.text_attention_heads}")
    if args.text_attention_heads:  # G and D attend over a char-CNN-RNN's position states, whatever pooling it was saved with
        source = args.text_encoder_path or args.pretrained_model_name_or_path or (args.text_encoder if os.path.isdir(args.text_encoder) else None)
        try:
            if source is not None:
                args.text_positions = text_positions(source)
            elif args.text_encoder == CHAR_CNN_RNN:
                args.text_positions = CharCnnRnnConfig(**args.char_cnn_rnn_config).num_positions
        except (OSError, ValueError) as error:  # no text encoder there (CheckpointError is a ValueError)
            parser.error(f"--text_attention_heads reads the text encoder's position states, and {source or args.text_encoder} "
                         f"gives none: {error}")
        except (TypeError, ArithmeticError) as error:
            parser.error(f"--char_cnn_rnn_config {json.dumps(args.char_cnn_rnn_config)}: not a char-CNN-RNN ({error})")
        char_cnn_rnn = args.text_positions != 0 if source is not None else args.text_encoder == CHAR_CNN_RNN
        what = f"gives {args.text_positions} position(s)" if char_cnn_rnn else "gives one pooled embedding"
        if args.text_positions < 2 and "text_attention_heads" not in given:
            args.text_attention_heads = 0  # a recipe's attention goes off with a pooled text encoder (the MiniLM default)
            print(f"note: --recipe {recipe}'s text attention is off: {source or args.text_encoder} {what}, not a "
                  "char-CNN-RNN's position states", file=sys.stderr)
        elif args.text_positions < 2:
            parser.error(f"--text_attention_heads reads a char-CNN-RNN's position states (2 or more), and "
                         f"{source or args.text_encoder} {what}: pass a char-CNN-RNN as --text_encoder_path (e.g. "
                         "pretrained) or --text_encoder char-cnn-rnn, or --text_attention_heads 0")
    if args.push_to_hub and args.hub_model_id is None:
        args.hub_model_id = Path(args.output_dir).name
    return args


# ----------------------------------------------------------------------------------------------------------------
# Text encoder and validation


# The flags that shape G and D (a checkpoint resumes only with the same ones); aux_class_weight adds D's class head.
MODEL_FLAGS = ("fusion", "conditioning_augmentation", "normalize_text", "text_batch_norm", "conditioning", "projection_scales",
               "ngf", "ndf", "noise_dim", "text_proj_dim", "resolution", "aux_class_weight", "polar_harmonics",
               "polar_antialias", "spectral_norm", "residual_blocks", "transposed_up_blocks", "deep_fusion", "fusion_masks", "output_palette",
               "discriminator_from_joint_embedding", "text_attention_heads", "text_positions", "projection_regions")


def load_pretrained_generator(name_or_path: str, config: dict) -> tuple[GanClsGenerator, Path]:
    """The generator of a t2i pipeline (folder or Hub repo id) and the pipeline's local folder, checked against the
    generator the flags describe (``config``, as `generator_config`) before any data is loaded.

    Raises:
        ValueError: the pipeline's generator cannot start this run (`GanClsGenerator.grow_from_` names the difference).
        FileNotFoundError, CheckpointError: no such pipeline, or a generator folder that fails t2i's load checks.
    """
    folder = resolve_pretrained_folder(name_or_path, subfolder="generator")
    check_before_loading(GanClsGenerator, folder / "generator")
    trained = GanClsGenerator.from_pretrained(folder / "generator")
    try:
        GanClsGenerator(text_embed_dim=trained.config.text_embed_dim, **config).grow_from_(trained)
    except ValueError as error:
        raise ValueError(f"--pretrained_model_name_or_path {name_or_path}: {error}; give the model flags of its "
                         f"generator ({folder / 'generator' / 'config.json'})") from error
    return trained, folder


def recalibrate_ema(ema_generator, embeddings, batch_size: int, seed: int, device: torch.device, batches: int = 16) -> None:
    """Give the EMA generator BatchNorm statistics of its own averaged weights.

    `update_ema` copies the running statistics of the trained generator, which belong to its current weights; with
    the averaged weights they produce washed-out images (measured at step 2,000 of the default model: petal-colour
    agreement 0.00 with the copied statistics, 0.42 with its own).
    """
    rng = torch.Generator().manual_seed(seed)
    noise_dim = ema_generator.config.noise_dim
    standing_batch_norm_(ema_generator, (
        (torch.randn(batch_size, noise_dim, generator=rng).to(device),
         embeddings.sample(torch.randint(len(embeddings), (batch_size,), generator=rng), rng).to(device))
        for _ in range(batches)
    ))


@torch.no_grad()
def log_validation(accelerator, generator, validation_embeds: torch.Tensor, output_dir: str, seed: int, epoch: int, global_step: int) -> Path:
    """A grid of the fixed validation prompts (rows) × 4 fixed seeds (columns) → samples/ and the tracker."""
    was_training = generator.training
    generator.eval()
    num_seeds = 4
    noise = torch.randn(num_seeds, generator.config.noise_dim, generator=torch.Generator().manual_seed(seed))
    text = validation_embeds.repeat_interleave(num_seeds, dim=0).to(accelerator.device)
    images = to_unit_range(generator(noise.repeat(len(validation_embeds), 1).to(accelerator.device), text)).cpu()
    generator.train(was_training)
    grid = images.view(len(validation_embeds), num_seeds, *images.shape[1:]).permute(2, 0, 3, 1, 4)
    grid = grid.reshape(images.shape[1], len(validation_embeds) * images.shape[2], num_seeds * images.shape[3])
    path = Path(output_dir) / "samples" / f"epoch_{epoch:04d}_step_{global_step:07d}.png"
    path.parent.mkdir(parents=True, exist_ok=True)
    GanClsPipeline.numpy_to_pil(grid.permute(1, 2, 0).numpy()[None])[0].save(path)
    for tracker in accelerator.trackers:
        if tracker.name == "tensorboard":
            tracker.writer.add_image("validation", grid, global_step)
    return path


def evaluate_and_keep_best(accelerator, scorer: GeneratorScorer, generator, ema_generator, embeddings, output_dir: str,
                           metric: str, best: dict | None, step: int, batch_size: int, seed: int) -> dict | None:
    """Score the sampling generator (EMA if kept) and, when it beats ``best``, publish it atomically as
    ``output_dir/best_generator``. Returns the best record {"step", "metric", "value"} (main process; others keep theirs)."""
    if accelerator.is_main_process:
        if ema_generator is not None:
            recalibrate_ema(ema_generator, embeddings, batch_size, seed, accelerator.device)
        model = ema_generator if ema_generator is not None else accelerator.unwrap_model(generator)
        started = time.monotonic()
        metrics = scorer(model)
        accelerator.log({f"eval/{name}": value for name, value in metrics.items()}, step=step)
        value = metrics[metric]
        better = best is None or (value < best["value"] if metric in LOWER_IS_BETTER else value > best["value"])
        logger.info(f"step {step}: {metric} = {value:.6f} ({time.monotonic() - started:.0f} s)" + (", the best so far" if better else ""))
        if better and not math.isnan(value):
            best = {"step": step, "metric": metric, "value": value, "metrics": metrics}
            final = Path(output_dir) / BEST_GENERATOR_FOLDER
            partial = final.with_name(f".{final.name}.partial")
            shutil.rmtree(partial, ignore_errors=True)
            copy.deepcopy(model).to(memory_format=torch.contiguous_format).cpu().save_pretrained(partial)
            (partial / "evaluation.json").write_text(json.dumps(best, indent=2))
            publish_folder(partial, final)
    accelerator.wait_for_everyone()
    return best


def stop_on_divergence(accelerator, problem: str | None, step: int, last_check: int, output_dir: str, progress) -> None:
    """Exit (status 1, on every rank at once) with a message that names ``problem`` (`t2i.training.non_finite`),
    the steps it arose between (weights are checked only where they are saved, ``last_check`` being the last
    such step) and the last checkpoint, which the check keeps finite; return when no rank has a problem."""
    diverged = problem is not None
    if accelerator.num_processes > 1:  # one rank's NaN reaches the others' weights through the gradient all-reduce
        diverged = bool(accelerator.reduce(torch.tensor([float(diverged)], device=accelerator.device), reduction="sum").item())
    if not diverged:
        return
    checkpoints = list_checkpoints(output_dir)
    progress.close()
    accelerator.end_training()
    when = f"at step {step}" if problem is None or problem.startswith("loss") or last_check >= step - 1 else f"after step {last_check}, found at step {step}"
    raise SystemExit(
        f"training diverged {when}: {problem or 'another rank'} is not finite. Nothing of that was saved; the last checkpoint "
        f"is {checkpoints[-1] if checkpoints else 'none (none was saved yet)'}. Resuming restores the optimizers' state, "
        "learning rates included, so lower --learning_rate, --discriminator_learning_rate or the loss weights and train "
        "again in a new --output_dir (or copy a checkpoint there to start from), or resume with --reseed_on_resume --seed N "
        "to retry from the last checkpoint on other random draws")


def _hardware(accelerator) -> str:
    if accelerator.device.type == "cuda":
        return f"{accelerator.num_processes} × {torch.cuda.get_device_name(accelerator.device)}"
    return f"{accelerator.num_processes} CPU process(es), {os.cpu_count()} cores"


# ----------------------------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> None:
    """Parse flags, then train, checkpoint, validate, save the pipeline and (optionally) push it."""
    args = parse_args(argv)
    model_config = {name: getattr(args, name) for name in MODEL_FLAGS}
    started = time.monotonic()
    accelerator = Accelerator(
        mixed_precision=args.mixed_precision,
        log_with=None if args.report_to == "none" else args.report_to,
        project_config=ProjectConfiguration(project_dir=args.output_dir, logging_dir=os.path.join(args.output_dir, args.logging_dir)),
        cpu=not torch.cuda.is_available(),
    )
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.INFO)
    if accelerator.device.type == "cpu" and accelerator.mixed_precision == "bf16" and not cpu_has_fast_bf16():
        logger.warning("--mixed_precision bf16 on a CPU without bf16 units (AMX / AVX-512 BF16) is emulated and many "
                       "times slower than fp32: use --mixed_precision no here")
    set_seed(args.seed)
    if accelerator.is_main_process:
        os.makedirs(args.output_dir, exist_ok=True)
        for stale in Path(args.output_dir).glob(".checkpoint-*.partial"):  # left by a run killed mid-save
            shutil.rmtree(stale)
    resume_from = None  # checked now, before any data is loaded: a launch that cannot continue it fails at once
    if args.resume_from_checkpoint is not None:
        checkpoints = list_checkpoints(args.output_dir) if args.resume_from_checkpoint == "latest" else [Path(args.resume_from_checkpoint)]
        if checkpoints:
            resume_from = checkpoints[-1]
            check_resumable(resume_from, accelerator.num_processes, args.train_batch_size, model_config, use_ema=args.use_ema)
    pretrained_generator = None
    if args.pretrained_model_name_or_path is not None:
        pretrained_generator, pretrained_folder = load_pretrained_generator(args.pretrained_model_name_or_path, generator_config(vars(args)))
        if args.text_encoder_path is None:  # the generator was trained on that pipeline's text encoder
            args.text_encoder_path = str(pretrained_folder)

    # Data: decoded once into a uint8 tensor, captions embedded once (cached across runs).
    train_dataset = load_captioned_dataset(args.dataset_name, args.train_split, args.image_column, args.caption_column)
    if args.max_train_samples is not None:
        train_dataset = train_dataset.select(range(min(args.max_train_samples, len(train_dataset))))
    try:
        test_dataset = load_captioned_dataset(args.dataset_name, "test", args.image_column, args.caption_column)
    except (ValueError, KeyError, FileNotFoundError):
        test_dataset = None
    counterfactuals = swapped = None
    if args.counterfactual_negatives > 0 or args.counterfactual_fakes > 0:  # checked before the images are decoded and the text encoder is loaded
        # Edits are drawn with a fixed seed, not --seed: every run on a dataset shares one cached encoding.
        counterfactuals, swapped = counterfactual_captions(train_dataset["captions"], exchange=args.counterfactual_exchange,
                                                           plausible=args.counterfactual_plausible,
                                                           near_colors=args.counterfactual_near_colors)
        if not any(swapped):
            raise ValueError(f"--counterfactual_negatives/--counterfactual_fakes: none of the {len(swapped)} training captions "
                             "states a colour, count or shape word that can be swapped (t2i.data.counterfactual), so there "
                             "is no counterfactual to use; drop the flag")
    train_images = images_to_uint8(train_dataset, load_size_for(args.resolution))
    text_spec = TextEncoderSpec(
        name=args.text_encoder, path=args.text_encoder_path, teacher=args.text_encoder_teacher, steps=args.text_encoder_steps,
        batch_size=args.text_encoder_batch_size, learning_rate=args.text_encoder_learning_rate, char_cnn_rnn_config=args.char_cnn_rnn_config,
    )
    text_encoder, text_metrics = prepare_text_encoder(text_spec, accelerator, args.output_dir, train_dataset, train_images, test_dataset,
                                                      args.resolution, args.seed, args.cache_dir)
    if args.text_attention_heads:
        with_position_states(text_encoder.model)
    elif embedding_positions(text_encoder.model):  # an attention run's encoder, reused without attention: Reed's mean
        text_encoder.model.config.pooling = "mean"
    with accelerator.main_process_first():
        embeddings = load_or_build_caption_embeddings(train_dataset, text_encoder, cache_dir=args.cache_dir)
        counterfactual_embeddings = None
        if counterfactuals is not None:
            counterfactual_embeddings = load_or_build_caption_embeddings(counterfactuals, text_encoder, cache_dir=args.cache_dir)
            swapped = torch.tensor(swapped)
            accelerator.print(f"counterfactual negatives: {int(swapped.sum())} of {len(swapped)} captions have a swappable word")
        fragment_embeddings = None
        if args.fragment_captions > 0:  # drawn with a fixed seed, not --seed, like the counterfactuals
            fragments = caption_fragments(train_dataset["captions"])
            accelerator.print(f"caption fragments: {len({f for row in fragments for f in row})} distinct spans of the "
                              f"{sum(map(len, fragments))} training captions (their embeddings follow)")
            fragment_embeddings = load_or_build_caption_embeddings(fragments, text_encoder, cache_dir=args.cache_dir)
    validation_embeds = text_encoder.encode(args.validation_prompts)
    text_encoder_fingerprint = text_encoder.fingerprint()  # in every checkpoint: export_checkpoint refuses another encoder
    joint_image_encoder = None
    if args.matching_loss_weight > 0 or args.discriminator_from_joint_embedding:  # θ of the text encoder's joint embedding
        memory_format = torch.channels_last if args.channels_last else torch.contiguous_format
        joint_image_encoder = load_joint_image_encoder(text_spec.folder(args.output_dir)).to(accelerator.device, memory_format=memory_format)
    scorer = None
    if args.evaluation_steps is not None:
        if test_dataset is None or "attributes" not in test_dataset.column_names:
            raise ValueError("--evaluation_steps needs a 'test' split with an 'attributes' column (the synthetic set: python -m t2i.datasets synth)")
        scorer = GeneratorScorer(text_encoder, test_dataset, train_dataset, load_oracle()[0], num_samples=args.evaluation_samples, seed=args.seed)
    labels = torch.tensor(train_dataset["label"]) if "label" in train_dataset.column_names else None
    loader = TensorBatchLoader(
        train_images,
        embeddings,
        labels,
        batch_size=args.train_batch_size,
        resolution=args.resolution,
        captions_per_image=args.captions_per_image,
        hard_negatives=args.hard_negatives,
        counterfactual_negatives=args.counterfactual_negatives,
        counterfactual_embeddings=counterfactual_embeddings,
        swapped=swapped,
        fragment_captions=args.fragment_captions,
        fragment_embeddings=fragment_embeddings,
        counterfactual_texts=args.counterfactual_fakes > 0,
        generator=torch.Generator().manual_seed(args.seed),
        device=accelerator.device,
        process_index=accelerator.process_index,
        num_processes=accelerator.num_processes,
    )
    if len(loader) == 0:
        raise ValueError(f"{len(train_dataset)} images are fewer than one global batch of {args.train_batch_size * accelerator.num_processes}")

    # Models and optimisers (Adam, lr 2e-4, β₁ = 0.5, as in the paper).
    num_classes = int(labels.max()) + 1 if args.aux_class_weight > 0 and labels is not None else 0
    if args.aux_class_weight > 0 and num_classes == 0:
        raise ValueError("--aux_class_weight needs a 'label' column in the dataset")
    # Each phase draws from its own seeded stream: the GAN's initial weights must not depend on whether the text
    # encoder was trained in this process (drawing from the same stream) or loaded after a kill.
    set_seed(args.seed)
    generator = GanClsGenerator(text_embed_dim=embeddings.dim, **generator_config(vars(args)))
    if pretrained_generator is not None and resume_from is None:  # a resumed run has its own weights
        generator.grow_from_(pretrained_generator)
        accelerator.print(f"generator initialised from {args.pretrained_model_name_or_path}"
                          + "".join(f" (grown: {flag.replace('_', ' ')} added)" for flag in GROWABLE
                                    if getattr(args, flag) and not pretrained_generator.config.get(flag)))
    discriminator = GanClsDiscriminator(
        text_embed_dim=embeddings.dim, text_proj_dim=args.text_proj_dim, ndf=args.ndf, resolution=args.resolution, num_classes=num_classes,
        text_batch_norm=args.text_batch_norm, conditioning=args.conditioning, projection_scales=args.projection_scales,
        spectral_norm=args.spectral_norm, first_conv_bias=args.discriminator_from_joint_embedding,
        text_positions=args.text_positions, text_attention_heads=args.text_attention_heads, projection_regions=args.projection_regions,
    )
    if joint_image_encoder is not None and args.discriminator_from_joint_embedding and resume_from is None:
        try:
            discriminator.init_image_encoder_from_(joint_image_encoder.features)
        except ValueError as error:
            raise ValueError(f"--discriminator_from_joint_embedding: {error}") from error
        accelerator.print("discriminator image path initialised from the joint embedding's image encoder θ")
    discriminator.freeze_image_encoder_(args.freeze_discriminator_blocks)  # Adam skips the frozen ones: they get no gradient
    if args.freeze_discriminator_blocks:
        accelerator.print(f"discriminator: the first {args.freeze_discriminator_blocks} image blocks are frozen (FreezeD)")
    if args.matching_loss_weight == 0:
        joint_image_encoder = None  # only the matching loss reads θ during training
    objective = GanClsObjective(
        loss=args.loss, gan_int=args.gan_int, int_beta=args.int_beta, int_captions=args.int_captions,
        int_fraction=args.int_fraction,
        unconditional_weight=args.unconditional_weight, label_smoothing=args.label_smoothing,
        feature_matching_weight=args.feature_matching_weight, ma_gp=args.ma_gp, aux_class_weight=args.aux_class_weight,
        matching_loss_weight=args.matching_loss_weight, contrastive_weight=args.contrastive_weight,
        contrastive_generator=args.contrastive_generator, contrastive_hard_negatives=args.contrastive_hard_negatives,
        counterfactual_fakes=args.counterfactual_fakes,
        mode_seeking_weight=args.mode_seeking_weight,
        mode_seeking_mixtures=args.mode_seeking_mixtures, mode_seeking_scale=args.mode_seeking_scale,
        kl_weight=args.kl_weight if args.conditioning_augmentation else 0.0, diff_augment=tuple(args.diff_augment),
    )
    ema_generator = copy.deepcopy(generator).eval().requires_grad_(False).to(accelerator.device) if args.use_ema else None
    if args.channels_last:
        generator, discriminator = generator.to(memory_format=torch.channels_last), discriminator.to(memory_format=torch.channels_last)
    betas = (args.adam_beta1, args.adam_beta2)
    optimizer_g = torch.optim.Adam(generator.parameters(), lr=args.learning_rate, betas=betas)
    optimizer_d = torch.optim.Adam(discriminator.parameters(), lr=args.discriminator_learning_rate or args.learning_rate, betas=betas)
    generator, discriminator, optimizer_g, optimizer_d = accelerator.prepare(generator, discriminator, optimizer_g, optimizer_d)
    if args.torch_compile:
        generator, discriminator = torch.compile(generator), torch.compile(discriminator)

    steps_per_epoch = len(loader)
    max_train_steps = args.max_train_steps or args.num_train_epochs * steps_per_epoch
    num_epochs = math.ceil(max_train_steps / steps_per_epoch)
    # The step's randomness is drawn on the CPU from a per-process generator, so a seed means the same run on any device.
    noise_rng = torch.Generator().manual_seed(args.seed * 1000 + accelerator.process_index)

    global_step, first_epoch, resume_step_in_epoch, seconds_before_resume, gan_seconds_before_resume = 0, 0, 0, 0.0, 0.0
    best = None  # {"step", "metric", "value"} of the best evaluation so far, with --evaluation_steps
    if resume_from is not None:
        training_state, rng_state = load_checkpoint(accelerator, resume_from, (generator, discriminator), (optimizer_g, optimizer_d), ema_generator)
        global_step, first_epoch = training_state["global_step"], training_state["epoch"]
        resume_step_in_epoch = training_state["step_in_epoch"]
        seconds_before_resume = training_state.get("train_seconds", 0.0)  # so the model card's wall time covers every run
        gan_seconds_before_resume = training_state.get("gan_seconds", 0.0)
        best = training_state.get("best")
        published = Path(args.output_dir) / BEST_GENERATOR_FOLDER / "evaluation.json"
        published_step = json.loads(published.read_text())["step"] if accelerator.is_main_process and published.is_file() else None
        if published_step is not None and published_step != (best or {}).get("step"):
            # Published after this checkpoint by the killed run: its step is replayed and scored again from here.
            logger.warning(f"{published.parent} comes from step {published_step}, after {resume_from}: "
                           "removed, the steps from the checkpoint on are evaluated again")
            shutil.rmtree(published.parent)
            best = None
        inherited = Path(resume_from).parent / BEST_GENERATOR_FOLDER
        if accelerator.is_main_process and best is not None and not published.parent.exists() and inherited.is_dir():
            # Resumed from another run's checkpoint (a second training phase): its best generator comes along, so that
            # output_dir still ends with the best one if no evaluation here beats it.
            if json.loads((inherited / "evaluation.json").read_text()).get("step") == best["step"]:
                shutil.copytree(inherited, published.parent)
                logger.info(f"{inherited} (step {best['step']}, {best['metric']} = {best['value']:.4f}) copied: the best so far")
        if accelerator.is_main_process and best is not None and not published.parent.exists():
            best = None  # a record whose generator is nowhere: the evaluations here start a new one
        if not args.reseed_on_resume:  # a killed run replays exactly; a new phase draws its own streams from --seed
            loader.generator.set_state(rng_state["loader_epoch_start"])
            noise_rng.set_state(rng_state["noise"])
        accelerator.print(f"Resumed from {resume_from} at step {global_step}")
    elif args.resume_from_checkpoint is not None:
        accelerator.print(f"No checkpoint in {args.output_dir}: starting a new run")

    if accelerator.is_main_process and args.report_to != "none":
        accelerator.init_trackers("gan-cls", config={k: v for k, v in vars(args).items() if isinstance(v, (int, float, str, bool))})
    accelerator.print(
        f"{len(train_dataset)} images, {steps_per_epoch} steps/epoch, {max_train_steps} steps, "
        f"global batch {args.train_batch_size * accelerator.num_processes}, text embeddings {embeddings.dim}-d"
    )
    if scorer is not None and pretrained_generator is not None and resume_from is None:
        # The starting generator is scored too: output_dir ends with it if fine-tuning only makes it worse.
        best = evaluate_and_keep_best(accelerator, scorer, generator, ema_generator, embeddings, args.output_dir,
                                      args.evaluation_metric, best, 0, args.train_batch_size, args.seed)
    finished = global_step >= max_train_steps or (
        args.max_train_minutes is not None and gan_seconds_before_resume >= 60 * args.max_train_minutes)
    if finished:  # e.g. killed after its last checkpoint: one more step would end it with other weights
        accelerator.print(f"{resume_from} is the end of this run (step {global_step}): no more steps, saving the pipeline")
        max_train_steps = global_step
    progress = tqdm(total=max_train_steps, initial=global_step, disable=not accelerator.is_local_main_process, desc="steps")
    last_check = global_step  # the last step whose weights were checked finite (a resumed checkpoint was saved checked)
    loop_started = time.monotonic()  # --max_train_minutes counts GAN steps only, not data loading or text-encoder training
    losses: dict[str, float] = training_state.get("losses", {}) if resume_from is not None else {}  # the last step's, for the card

    def draw_validation_grid(epoch: int) -> None:
        if ema_generator is not None:  # the next update_ema overwrites these statistics again, so training is unchanged
            recalibrate_ema(ema_generator, embeddings, args.train_batch_size, args.seed, accelerator.device)
        sample_model = ema_generator if ema_generator is not None else accelerator.unwrap_model(generator)
        logger.info(f"Validation grid: {log_validation(accelerator, sample_model, validation_embeds, args.output_dir, args.seed, epoch, global_step)}")

    if finished and accelerator.is_main_process:  # it may have been killed between its last checkpoint and its grid
        draw_validation_grid(first_epoch)
    for epoch in range(first_epoch, first_epoch if finished else num_epochs):
        epoch_start_rng = loader.generator.get_state()
        for step_in_epoch, batch in enumerate(loader):
            if epoch == first_epoch and step_in_epoch < resume_step_in_epoch:
                continue  # replayed to keep the loader's random stream where the checkpoint left it
            losses = train_step(accelerator, generator, discriminator, optimizer_g, optimizer_d, batch, objective, noise_rng,
                                joint_image_encoder, update_generator=global_step >= args.discriminator_warmup_steps)
            if ema_generator is not None:
                update_ema(ema_generator, accelerator.unwrap_model(generator), args.ema_decay)
            global_step += 1
            progress.update(1)
            if args.max_train_minutes is not None:  # the main process's clock decides, so every rank stops at one step
                if accelerator.is_main_process and gan_seconds_before_resume + time.monotonic() - loop_started >= 60 * args.max_train_minutes:
                    accelerator.set_trigger()
                if accelerator.check_trigger():
                    max_train_steps = global_step  # this step becomes the last one: checkpointed, evaluated and saved
            saves = global_step % args.checkpointing_steps == 0 or global_step >= max_train_steps or (
                scorer is not None and global_step % args.evaluation_steps == 0)
            # Stop before a NaN state is checkpointed, scored or saved: every rank stops at the same step.
            modules = {"generator": generator, "discriminator": discriminator, **({"EMA generator": ema_generator} if ema_generator is not None else {})}
            stop_on_divergence(accelerator, non_finite(losses, modules if saves else None,
                                                       {"generator": optimizer_g, "discriminator": optimizer_d} if saves else None),
                               global_step, last_check, args.output_dir, progress)
            last_check = global_step if saves else last_check
            progress.set_postfix({k: f"{v:.3f}" for k, v in losses.items()})
            accelerator.log(losses, step=global_step)

            if scorer is not None and (global_step % args.evaluation_steps == 0 or global_step == max_train_steps):
                best = evaluate_and_keep_best(accelerator, scorer, generator, ema_generator, embeddings, args.output_dir,
                                              args.evaluation_metric, best, global_step, args.train_batch_size, args.seed)
            if global_step % args.checkpointing_steps == 0 or global_step == max_train_steps:
                training_state = {"global_step": global_step, "epoch": epoch, "step_in_epoch": step_in_epoch + 1,
                                  "num_processes": accelerator.num_processes, "per_process_batch_size": args.train_batch_size,
                                  "model_config": model_config,
                                  "train_seconds": seconds_before_resume + time.monotonic() - started,
                                  "gan_seconds": gan_seconds_before_resume + time.monotonic() - loop_started, "best": best,
                                  "losses": losses, "use_ema": ema_generator is not None,
                                  "text_encoder_fingerprint": text_encoder_fingerprint}
                rng_state = {"loader_epoch_start": epoch_start_rng, "noise": noise_rng.get_state()}
                path = save_checkpoint(accelerator, args.output_dir, training_state, rng_state, (generator, discriminator), (optimizer_g, optimizer_d),
                                       ema_generator, args.checkpoints_total_limit)
                logger.info(f"Saved {path}")
            if global_step >= max_train_steps:
                break
        if accelerator.is_main_process and ((epoch + 1) % args.validation_epochs == 0 or global_step >= max_train_steps):
            draw_validation_grid(epoch)
        if global_step >= max_train_steps:
            break
    progress.close()

    # Every rank must hold the same weights after data-parallel training; check it rather than assume it.
    weights = torch.cat([p.detach().float().flatten() for p in accelerator.unwrap_model(generator).parameters()])
    checksums = accelerator.gather(torch.stack([weights.sum(), weights.abs().sum()]).to(accelerator.device)[None])
    ranks_agree = bool((checksums == checksums[0]).all())
    accelerator.print(f"generator weights identical on all {accelerator.num_processes} rank(s): {ranks_agree}")

    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        if ema_generator is not None:
            recalibrate_ema(ema_generator, embeddings, args.train_batch_size, args.seed, accelerator.device)
        final_generator = ema_generator if ema_generator is not None else accelerator.unwrap_model(generator)
        final_generator = final_generator.to(memory_format=torch.contiguous_format).cpu()
        if best is not None and (Path(args.output_dir) / BEST_GENERATOR_FOLDER).is_dir():  # the best-scoring generator, not the last
            final_generator = GanClsGenerator.from_pretrained(Path(args.output_dir) / BEST_GENERATOR_FOLDER)
            accelerator.print(f"Saving the best generator: step {best['step']}, {best['metric']} = {best['value']:.4f}")
        pipeline = GanClsPipeline(tokenizer=text_encoder.tokenizer, text_encoder=text_encoder.model, generator=final_generator)
        card = ModelCardInfo(
            model_id=args.hub_model_id or Path(args.output_dir).name,
            # A local folder is named by its folder name only: the path is this machine's, meaningless on the Hub page.
            dataset_name=Path(args.dataset_name).name if os.path.isdir(args.dataset_name) else args.dataset_name,
            dataset_description=f"{len(train_dataset)} training images (split '{args.train_split}')"
                                + (", a local folder." if os.path.isdir(args.dataset_name) else "."),
            synthetic_data="attributes" in train_dataset.column_names,
            text_encoder=text_spec.description(text_encoder, text_metrics),
            resolution=args.resolution,
            training_command="accelerate launch " + shlex.join(["train_accelerate.py", *(argv if argv is not None else sys.argv[1:])]),
            training_steps=global_step,
            train_batch_size=args.train_batch_size * accelerator.num_processes,
            wall_time_hours=(seconds_before_resume + time.monotonic() - started) / 3600,
            hardware=_hardware(accelerator),
            metrics=text_metrics,
            evaluation_protocol="Metrics recorded during training (text-encoder joint embedding, held-out test classes)." if text_metrics else None,
            widget_prompts=list(args.validation_prompts),
            # GAN-INT-CLS only when the run had GAN-INT's terms: t2i-v7 and t2i-v8 train GAN-CLS alone.
            tags=[tag for tag in MODEL_CARD_TAGS if tag != "gan-int-cls" or args.gan_int],
        )
        pipeline.save_with_model_card(args.output_dir, card)
        trained_image_encoder = text_spec.folder(args.output_dir) / JOINT_IMAGE_ENCODER_FOLDER
        if trained_image_encoder.is_dir():  # θ travels with the pipeline so evaluation can compute R-precision
            shutil.copytree(trained_image_encoder, Path(args.output_dir) / JOINT_IMAGE_ENCODER_FOLDER, dirs_exist_ok=True)
        (Path(args.output_dir) / "training_summary.json").write_text(json.dumps({"final_losses": losses, **card.__dict__}, indent=2, default=str))
        accelerator.print(f"Saved the pipeline to {args.output_dir}")
        if args.push_to_hub:
            url = pipeline.push_to_hub(args.hub_model_id, model_card=card, private=args.hub_private_repo, token=args.hub_token)
            accelerator.print(f"Pushed to {url}")
    accelerator.wait_for_everyone()  # gloo may abort at exit if a rank leaves early
    accelerator.end_training()
    if not ranks_agree:
        raise RuntimeError("generator weights differ between ranks")


if __name__ == "__main__":
    main()
