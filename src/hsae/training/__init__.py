"""The streaming SAE trainer: it consumes batches of h from a store and knows nothing of U-Nets.

`config` (TrainConfig), `batches` (store rows → shuffled batches, initialisation), `checkpoint`
(atomic checkpoints, exact resume), `loop` (the optimisation loop and `train`), `plots` (log and
loss curves).
"""

from hsae.training.batches import (
    StoreBatches,
    geometric_median,
    image_index_for_rows,
    init_sae,
    input_scale_of,
    sample_images,
)
from hsae.training.checkpoint import checkpoint_dir, read_trainer_state, save_checkpoint
from hsae.training.config import (
    CHECKPOINT,
    STATE_FILE,
    StoreLike,
    TrainConfig,
    TrainingDivergedError,
)
from hsae.training.loop import train
from hsae.training.plots import plot_curves

__all__ = [
    "CHECKPOINT",
    "STATE_FILE",
    "StoreBatches",
    "StoreLike",
    "TrainConfig",
    "TrainingDivergedError",
    "checkpoint_dir",
    "geometric_median",
    "image_index_for_rows",
    "init_sae",
    "input_scale_of",
    "plot_curves",
    "read_trainer_state",
    "sample_images",
    "save_checkpoint",
    "train",
]
