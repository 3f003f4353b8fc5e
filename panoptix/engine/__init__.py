"""Training and inference engine: trainer, checkpoints, distributed helpers, predictor."""
