"""Quality metrics for text-to-image generators on the synthetic captioned-flowers set.

The synthetic set records every image's attributes, so an **attribute oracle** (a small CNN trained on flowers
from the same renderer, with every attribute drawn independently and no test-class combination) can read petal
colour, secondary colour, petal shape, petal-count bin and centre colour off any image. With it:

- **text-image agreement**: for each sampled test caption, one generated image; for every attribute the caption
  states, does the oracle see it? Reported per attribute and as "all stated attributes right";
- **Fréchet distance** between oracle features of generated and of real test images, next to the distance between
  real train and real test images (the same sample sizes), so the number has a scale;
- **diversity**: mean pairwise oracle-feature distance between images of one caption drawn with different seeds,
  against the same quantity for real images of the caption's class (mode collapse shows as a ratio near 0);
- **R-precision** (AttnGAN's, R = 1): with a char-CNN-RNN joint embedding, the fraction of generated images whose
  own caption scores highest among 100 (itself and 99 captions of other classes) under the joint embedding's
  compatibility φ(t)·θ(x);
- **FID** with Inception-v3 through torchmetrics, when a weights file is given (not available offline here).

    python -m t2i.evaluation --model pretrained --dataset data/synthetic-flowers --split test --num-samples 2000 --out results.json
"""

from .metrics import (
    HEADLINE_METRICS,
    LOWER_IS_BETTER,
    TABLE_COLUMNS,
    GeneratorScorer,
    evaluate_pipeline,
    frechet_distance,
    headline_metrics,
    mean_pairwise_distance,
    r_precision,
    text_image_agreement,
)
from .oracle import (
    ORACLE_ATTRIBUTES,
    ORACLE_RESOLUTION,
    SHIPPED_ORACLE_SHA256,
    AttributeOracle,
    attribute_targets,
    load_oracle,
    load_or_train_oracle,
    oracle_accuracy,
    oracle_training_set,
    shipped_oracle_folder,
    train_attribute_oracle,
)
from .report import example_captions, results_markdown, save_sample_grid, update_model_card

__all__ = [
    "HEADLINE_METRICS", "LOWER_IS_BETTER", "ORACLE_ATTRIBUTES", "ORACLE_RESOLUTION", "SHIPPED_ORACLE_SHA256", "TABLE_COLUMNS",
    "AttributeOracle", "GeneratorScorer", "attribute_targets", "evaluate_pipeline", "example_captions",
    "frechet_distance", "headline_metrics", "load_oracle", "load_or_train_oracle", "mean_pairwise_distance",
    "oracle_accuracy", "oracle_training_set", "r_precision", "results_markdown", "save_sample_grid",
    "shipped_oracle_folder", "text_image_agreement", "train_attribute_oracle", "update_model_card",
]
