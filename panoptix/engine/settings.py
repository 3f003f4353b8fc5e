"""The non-model sections of a config: ``data``, ``solver`` and ``engine``, with their defaults.

Plain dataclasses (their fields are the config keys, checked like a component's constructor);
no torch import, so a config can be validated before anything heavy is loaded.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

from panoptix.data.spec import DatasetSpec


@dataclass
class DataSettings:
    """Datasets and training-time augmentation.

    Attributes:
        train, val: `DatasetSpec` sections (``val`` may name no data).
        min_size_train, max_size_train: multi-scale jitter (short side drawn from the list, long side capped).
        flip: horizontal flip probability.
        scale_range: random ratio multiplying the chosen short side (mmseg's ``ratio_range``).
        crop_size: (h, w) random crop after the resize; None for none.
        mosaic: probability of a 4-image Mosaic (spec section 8); ``mosaic_size`` (h, w) of a quadrant.
        pseudo: a label folder of pseudo-labelled images (``panoptix pseudo-label``'s output, ``root``);
            when it names data, each batch takes ``labelled_ratio`` of its images from ``train``.
        num_workers: data-loader processes.
        group_by_aspect_ratio: batches hold only landscape or only portrait images (detectron2's
            default), so little of a padded batch is padding.
    """

    components: ClassVar[dict[str, Any]] = {"train": (DatasetSpec, {"split": "train"}),
                                            "val": (DatasetSpec, {"split": "val"}),
                                            "pseudo": (DatasetSpec, {"format": "ade20k", "split": "pseudo"})}
    train: dict[str, Any] = field(default_factory=lambda: {"split": "train"})
    val: dict[str, Any] = field(default_factory=lambda: {"split": "val"})
    pseudo: dict[str, Any] = field(default_factory=lambda: {"format": "ade20k", "split": "pseudo"})
    labelled_ratio: float = 0.5
    min_size_train: Sequence[int] = (640, 672, 704, 736, 768, 800)
    max_size_train: int = 1333
    flip: float = 0.5
    scale_range: Sequence[float] = (1.0, 1.0)
    crop_size: Sequence[int] | None = None
    mosaic: float = 0.0
    mosaic_size: Sequence[int] | None = None
    num_workers: int = 2
    group_by_aspect_ratio: bool = True


@dataclass
class SolverSettings:
    """Optimisation settings (detectron2's defaults for a 16-image batch).

    Attributes:
        weight_decay_norm: weight decay of normalisation parameters (detectron2: 0).
        weight_decay_bias: weight decay of biases; None = ``weight_decay`` (detectron2's default).
        amp: mixed precision on CUDA; ``amp_dtype`` float16 (with loss scaling) or bfloat16.
        cpu_amp: bfloat16 autocast when training on the CPU (off by default: it pays only where the
            CPU computes bfloat16 natively, AVX512-BF16 or AMX; 1.4x per step of ``panoptic_fpn_tiny``
            on an AVX512-BF16 EPYC). Prediction on the CPU stays float32.
        optimizer: ``"sgd"`` (with ``momentum``; the papers' choice) or ``"adamw"`` (decoupled weight
            decay, ``betas``; converges in fewer iterations when training a small model from scratch).
        lr_schedule: ``"step"`` (``gamma`` at each of ``steps``) or ``"poly"`` ((1 - it / max_iter) **
            ``poly_power``, the scene parsing schedule).
        scale_schedule: scale ``steps`` and ``warmup_iters`` by ``max_iter / schedule_iters``, so a
            shorter or longer run keeps the schedule's shape (``solver.max_iter=9000
            solver.scale_schedule=true`` on a 90k config decays at 6k and 8k).
        schedule_iters: the ``max_iter`` that ``steps`` and ``warmup_iters`` were written for; filled
            in from the config file (and its ``_base_``) when not set.
    """

    optimizer: Literal["sgd", "adamw"] = "sgd"
    batch_size: int = 16
    base_lr: float = 0.02
    momentum: float = 0.9
    betas: Sequence[float] = (0.9, 0.999)
    weight_decay: float = 1e-4
    weight_decay_norm: float = 0.0
    weight_decay_bias: float | None = None
    max_iter: int = 90000
    warmup_iters: int = 1000
    warmup_factor: float = 0.001
    steps: Sequence[int] = (60000, 80000)
    gamma: float = 0.1
    lr_schedule: Literal["step", "poly"] = "step"
    poly_power: float = 0.9
    scale_schedule: bool = False
    schedule_iters: int | None = None
    clip_grad: float = 0.0
    amp: bool = True
    amp_dtype: Literal["float16", "bfloat16"] = "float16"
    cpu_amp: bool = False

    def schedule_note(self) -> str | None:
        """One line when the run ends before its warm-up or learning-rate steps; None otherwise."""
        late = [f"solver.warmup_iters {self.warmup_iters}"] if self.warmup_iters > self.max_iter else []
        if self.lr_schedule == "step":
            late += [f"solver.steps {list(self.steps)}"] if any(s >= self.max_iter for s in self.steps) else []
        if not late:
            return None
        return (f"solver.max_iter {self.max_iter} is below {' and '.join(late)}: the schedule is cut short; "
                f"solver.scale_schedule=true scales steps and warm-up with max_iter")


@dataclass
class EngineSettings:
    """Where and how often the trainer writes, evaluates and checkpoints.

    ``init_weights``: a checkpoint whose model weights a fresh run starts from (fine-tuning; the
    optimizer and schedule start anew); a run that resumes from its own folder ignores it.
    ``final_eval``: evaluate the whole val split after the last iteration (into ``train_summary.json``);
    ``panoptix demo`` turns it off because its own prediction step scores the same split.
    """

    output_dir: str = "runs/train"
    seed: int = 0
    eval_period: int = 0
    eval_images: int = 0
    final_eval: bool = True
    checkpoint_period: int = 5000
    log_period: int = 20
    resume: bool = True
    init_weights: str | None = None
    device: str = "auto"
    tensorboard: bool = True
