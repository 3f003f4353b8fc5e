"""Parts every system shares: preprocessing, post-processing (batched mask paste), `Instances`,
optimiser parameter groups, SyncBatchNorm under DDP, aspect-ratio grouped batches."""

from __future__ import annotations

import warnings
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models.detection.roi_heads import paste_masks_in_image

from panoptix.engine.optim import build_optimizer, parameter_groups, prepare_norms
from panoptix.engine.sampler import StreamBatchSampler, TrainingStream
from panoptix.engine.settings import SolverSettings
from panoptix.models.postprocess import detector_postprocess, paste_masks, resize_boxes
from panoptix.models.preprocess import Preprocessor, pad_maps
from panoptix.structures import Instances


def test_paste_masks_puts_each_mask_exactly_in_its_box():
    boxes = torch.tensor([[10.0, 20.0, 30.0, 40.0], [0.0, 0.0, 50.0, 10.0], [45.0, 45.0, 60.0, 60.0]])
    out = paste_masks(torch.ones(3, 1, 28, 28), boxes, (50, 50))
    assert out.shape == (3, 50, 50) and out.dtype == torch.float32
    for m, (x0, y0, x1, y1) in zip(out, boxes.int().tolist()):
        want = torch.zeros(50, 50)
        want[y0:min(y1, 50), x0:min(x1, 50)] = 1.0
        assert torch.equal(m > 0.5, want.bool())  # pixel centres inside the box sample the mask
        assert m[want == 0].abs().max() == 0 and (m[want == 1] > 0.75).all()  # bilinear only at the edges
    assert paste_masks(torch.ones(0, 28, 28), torch.zeros(0, 4), (7, 9)).shape == (0, 7, 9)


def test_paste_masks_agrees_with_torchvision_and_chunks_the_same(monkeypatch):
    g = torch.Generator().manual_seed(0)
    n = 12
    xy = torch.rand(n, 2, generator=g) * 60
    wh = torch.rand(n, 2, generator=g) * 40 + 8
    boxes = torch.cat([xy, xy + wh], 1)
    masks = F.interpolate(torch.rand(n, 1, 4, 4, generator=g), size=(28, 28), mode="bilinear")
    ours = paste_masks(masks, boxes, (80, 90)) > 0.5
    theirs = paste_masks_in_image(masks, boxes, (80, 90))[:, 0] > 0.5
    inter = (ours & theirs).flatten(1).sum(1).float()
    union = (ours | theirs).flatten(1).sum(1).float()
    # torchvision rounds each box to whole pixels and resizes per instance: close, not identical
    assert inter.sum() / union.sum() > 0.85 and (inter / union).min() > 0.7
    import panoptix.models.postprocess as post

    monkeypatch.setattr(post, "_PASTE_BUDGET", 2 * 80 * 90 * 5)  # chunks of 5 instances
    assert torch.equal(paste_masks(masks, boxes, (80, 90)) > 0.5, ours)


def test_detector_postprocess_filters_before_pasting_and_rescales():
    inst = Instances(torch.tensor([[0.0, 0.0, 10.0, 10.0], [5.0, 5.0, 20.0, 20.0]]), torch.tensor([0.9, 0.2]),
                     torch.tensor([1, 0]), torch.ones(2, 1, 28, 28), image_size=(20, 40))
    out = detector_postprocess(inst, (40, 80), min_score=0.5)
    assert len(out) == 1 and out.image_size == (40, 80)
    assert out.boxes.tolist() == [[0.0, 0.0, 20.0, 20.0]]
    assert out.masks.shape == (1, 40, 80) and int(out.masks[0].sum()) == 400
    assert resize_boxes(torch.tensor([[2, 4, 6, 8]]), (10, 10), (20, 5)).tolist() == [[1.0, 8.0, 3.0, 16.0]]


def test_instances_indexing_and_extra_fields():
    inst = Instances(torch.rand(4, 4), torch.tensor([0.1, 0.9, 0.5, 0.7]), torch.arange(4), torch.rand(4, 8, 8),
                     image_size=(8, 8), extra={"ranking": torch.tensor([3.0, 2.0, 1.0, 0.0])})
    keep = inst[inst.scores > 0.4]
    assert keep.labels.tolist() == [1, 2, 3] and keep.extra["ranking"].tolist() == [2.0, 1.0, 0.0]
    assert keep.image_size == (8, 8) and keep.masks.shape == (3, 8, 8)
    assert inst[1:3].labels.tolist() == [1, 2] and inst[-1].labels.tolist() == [3] and len(inst[0]) == 1
    assert inst[torch.tensor([3, 0])].scores.tolist() == pytest.approx([0.7, 0.1])
    assert inst.replace(scores=torch.zeros(4)).extra is not inst.extra
    with pytest.raises(ValueError, match="ranking has 2 rows, scores has 4"):
        Instances(torch.rand(4, 4), torch.rand(4), torch.arange(4), extra={"ranking": torch.rand(2)})


def test_preprocess_resizes_with_antialias_and_pads():
    pre = Preprocessor(min_size_test=32, max_size_test=1000, size_divisibility=32).eval()
    im = torch.rand(3, 64, 100)
    batch = pre([im, torch.rand(3, 20, 20)])
    assert batch.image_sizes == [(32, 50), (32, 32)] and batch.tensors.shape == (2, 3, 32, 64)
    want = F.interpolate(im[None], size=(32, 50), mode="bilinear", align_corners=False, antialias=True)[0]
    torch.testing.assert_close(batch.tensors[0, :, :, :50], (want - pre.pixel_mean) / pre.pixel_std)
    assert batch.tensors[0, :, :, 50:].abs().sum() == 0
    assert pre.train()([im]).image_sizes == [(64, 100)]  # training images arrive resized
    padded = pad_maps([torch.ones(2, 3, dtype=torch.int64)], (4, 4))
    assert padded.tolist() == [[[1, 1, 1, 255], [1, 1, 1, 255], [255] * 4, [255] * 4]]
    with pytest.raises(ValueError, match=r"\(3, H, W\) float"):
        pre([torch.zeros(3, 8, 8, dtype=torch.uint8)])


def test_no_weight_decay_on_norms_and_the_bias_option():
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Conv2d(4, 4, 1, bias=False), nn.GroupNorm(2, 4))
    model[2].weight.requires_grad_(False)
    groups = {g["weight_decay"]: g["params"] for g in parameter_groups(model, 1e-4)}
    assert set(groups) == {1e-4, 0.0}
    assert [p.shape for p in groups[0.0]] == [torch.Size([4])] * 4      # BN and GN weight and bias
    assert [p.shape for p in groups[1e-4]] == [torch.Size([4, 3, 3, 3]), torch.Size([4])]  # conv weight, bias
    groups = {g["weight_decay"]: g["params"] for g in parameter_groups(model, 1e-4, weight_decay_bias=0.0)}
    assert [p.shape for p in groups[1e-4]] == [torch.Size([4, 3, 3, 3])]
    assert sum(len(g["params"]) for g in parameter_groups(model, 1e-4, 1e-4)) == 6  # each trainable param once


def test_optimizer_choice_keeps_the_decay_groups():
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.GroupNorm(2, 4))
    sgd = build_optimizer(model, SolverSettings(base_lr=0.02, weight_decay=1e-4))
    assert isinstance(sgd, torch.optim.SGD) and sgd.defaults["momentum"] == 0.9 and sgd.defaults["lr"] == 0.02
    adamw = build_optimizer(model, SolverSettings(optimizer="adamw", base_lr=1e-3, weight_decay=0.05,
                                                  betas=(0.9, 0.99)))
    assert isinstance(adamw, torch.optim.AdamW) and adamw.defaults["betas"] == (0.9, 0.99)
    assert sorted(g["weight_decay"] for g in adamw.param_groups) == [0.0, 0.05]  # norms still undecayed
    with pytest.raises(ValueError, match="two values"):
        build_optimizer(model, SolverSettings(optimizer="adamw", betas=(0.9,)))


def test_sync_batchnorm_under_ddp_only():
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4))
    assert prepare_norms(model, 1) is model
    synced = prepare_norms(model, 2, "cuda")
    assert isinstance(synced[1], nn.SyncBatchNorm)
    with pytest.warns(UserWarning, match="SyncBatchNorm needs an accelerator"):
        assert isinstance(prepare_norms(nn.Sequential(nn.BatchNorm2d(4)), 2, "cpu")[0], nn.BatchNorm2d)
    frozen = nn.Sequential(nn.BatchNorm2d(4)).requires_grad_(False)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert isinstance(prepare_norms(frozen, 2, "cuda")[0], nn.BatchNorm2d)  # nothing to sync


class _Sized(torch.utils.data.Dataset):
    """Records of known size only (no decoding): portrait when index % 3 == 0."""

    def __init__(self, n: int) -> None:
        self.records = [SimpleNamespace(height=20 if i % 3 == 0 else 10, width=10 if i % 3 == 0 else 20)
                        for i in range(n)]

    def __len__(self) -> int:
        return len(self.records)


def test_batches_are_grouped_by_aspect_ratio():
    ds = _Sized(31)  # 11 portrait, 20 landscape
    stream = TrainingStream(ds, transform=None, target_fn=None, seed=5, group_size=4)
    assert stream.epoch_length == (11 // 4 + 20 // 4) * 4
    seen = set()
    for batch in StreamBatchSampler(4, 0, 40, rank=1, world_size=2):
        idx = [stream.index_at(g) for g in batch]
        assert len({ds.records[i].height > ds.records[i].width for i in idx}) == 1, idx
        seen.update(idx)
    assert len(seen) == 31  # leftovers of one epoch come back in the next
    again = TrainingStream(ds, transform=None, target_fn=None, seed=5, group_size=4)
    assert [again.index_at(g) for g in range(100, 120)] == [stream.index_at(g) for g in range(100, 120)]
    plain = TrainingStream(ds, transform=None, target_fn=None, seed=5, group_size=0)
    assert plain.epoch_length == 31 and sorted(plain.index_at(g) for g in range(31)) == list(range(31))
