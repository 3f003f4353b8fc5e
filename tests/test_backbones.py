"""Backbones: shapes, norms, freeze-at-stage, weights loaded only from safe local files or, when
asked, through timm (whose offline failure is tested; nothing is downloaded)."""

from __future__ import annotations

import os
import pickle
import subprocess
import sys

import pytest
import timm
import torch
from safetensors.torch import save_file
from torchvision.ops.misc import FrozenBatchNorm2d

from panoptix.engine.checkpoint import CheckpointError
from panoptix.models.backbones import KNOWN_BACKBONES, BackboneWeightsError, StemWidthError, TimmBackbone

TINY = dict(channels=(16, 32, 64, 128))
RANDOM_OK = dict(TINY, allow_frozen_without_weights=True)


def test_stem_width_timm_would_ignore_is_refused():
    """timm builds resnet18's 7x7 stem 64 wide whatever stem_width says; the deep stem takes it."""
    with pytest.raises(StemWidthError, match="stem_width=24 has no effect.*64 channels"):
        TimmBackbone("resnet18", norm="gn", freeze_at=0, stem_width=24, **TINY)
    deep = TimmBackbone("resnet18d", norm="gn", freeze_at=0, stem_width=8, **TINY)
    assert [m.out_channels for m in deep.body.conv1 if isinstance(m, torch.nn.Conv2d)] == [8, 8, 16]


def test_checkpoint_config_with_an_ignored_stem_width_still_builds():
    """Checkpoints written before the check carry stem_width: their weights are timm's 64-wide stem."""
    cfg = dict(arch="resnet18", norm="gn", freeze_at=0, stem_width=24, channels=[16, 32, 64, 128])
    b = TimmBackbone.from_config(cfg, weights_from_checkpoint=True)
    assert b.body.conv1.out_channels == 64
    with pytest.raises(StemWidthError):
        TimmBackbone.from_config(cfg)


def test_config_check_refuses_an_ignored_stem_width_before_any_data():
    """`check_model_config` (run before the data is read) is a config check, not a checkpoint load."""
    from panoptix.config import load_config
    from panoptix.engine.build import check_model_config

    with pytest.raises(StemWidthError, match="stem_width=24 has no effect"):
        check_model_config(load_config("panoptic_fpn_tiny", ["model.backbone.stem_width=24"]))
    check_model_config(load_config("panoptic_fpn_tiny", ["model.backbone.stem_width=24",
                                                         "model.backbone.arch=resnet18d"]))


def test_tiny_backbone_shapes_and_strides():
    b = TimmBackbone("resnet18", norm="gn", freeze_at=0, **TINY)
    feats = b(torch.rand(2, 3, 64, 96))
    assert list(feats) == ["c2", "c3", "c4", "c5"]
    assert [tuple(f.shape[1:]) for f in feats.values()] == [(16, 16, 24), (32, 8, 12), (64, 4, 6), (128, 2, 3)]
    assert b.out_channels == [16, 32, 64, 128] and b.strides == [4, 8, 16, 32]
    assert any(isinstance(m, torch.nn.GroupNorm) for m in b.modules())
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in b.modules())


@pytest.mark.parametrize("freeze_at, frozen", [(0, []), (1, ["conv1", "bn1"]), (2, ["conv1", "bn1", "layer1"]),
                                               (3, ["conv1", "bn1", "layer1", "layer2"])])
def test_freeze_at(freeze_at, frozen):
    b = TimmBackbone("resnet18", norm="bn", freeze_at=freeze_at, **RANDOM_OK)
    state = {n: all(not p.requires_grad for p in c.parameters()) for n, c in b.body.named_children()
             if list(c.parameters()) or isinstance(c, FrozenBatchNorm2d)}  # a frozen BN keeps only buffers
    assert sorted(n for n, f in state.items() if f) == sorted(frozen)
    # BatchNorm in a frozen stage is frozen too (its running statistics would drift otherwise)
    checked = 0
    for name, child in b.body.named_children():
        norms = [m for m in child.modules() if isinstance(m, (torch.nn.BatchNorm2d, FrozenBatchNorm2d))]
        want = FrozenBatchNorm2d if name in frozen else torch.nn.BatchNorm2d
        assert all(type(m) is want for m in norms), name
        checked += len(norms)
    assert checked >= 1 + 4 * 2 * 2  # bn1 and the 4 stages x 2 blocks x 2 BNs at least
    trainable_bn = [m for m in b.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert all(m.weight.requires_grad for m in trainable_bn)


def test_frozen_without_weights_is_refused():
    for kwargs in (dict(norm="frozen_bn", freeze_at=0), dict(norm="gn", freeze_at=2)):
        with pytest.raises(BackboneWeightsError, match=r"no weights: its frozen parts would stay random.*"
                                                       r"allow_frozen_without_weights=true$"):
            TimmBackbone("resnet18", **kwargs, **TINY)
    TimmBackbone("resnet18", norm="gn", freeze_at=0, **TINY)  # from scratch: fine
    TimmBackbone("resnet18", norm="frozen_bn", freeze_at=2, **RANDOM_OK)  # opted in


def test_hub_weights_offline_fail_in_one_line(tmp_path):
    """``weights: timm`` on a machine without internet: one line naming the local-file alternative.
    Runs in a subprocess with the Hugging Face hub offline and an empty cache, so nothing is fetched."""
    code = ("from panoptix.models.backbones import TimmBackbone, BackboneWeightsError\n"
            "for w in ('timm', 'hf-hub:timm/resnet18.a1_in1k'):\n"
            "    try:\n"
            "        TimmBackbone('resnet18', weights=w)\n"
            "    except BackboneWeightsError as err:\n"
            "        print(err)\n")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf"), "TORCH_HOME": str(tmp_path / "th"),
           "XDG_CACHE_HOME": str(tmp_path / "cache")}
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    lines = proc.stdout.strip().splitlines()
    assert len(lines) == 2
    for line, w in zip(lines, ("timm", "hf-hub:timm/resnet18.a1_in1k")):
        assert line.startswith(f"could not fetch ImageNet weights {w!r} for 'resnet18'")
        assert line.endswith("pass the file: backbone.weights=/path/to/resnet18.safetensors")


def test_frozen_bn_has_no_trainable_norm():
    b = TimmBackbone("resnet18", norm="frozen_bn", freeze_at=0, **RANDOM_OK)
    assert any(isinstance(m, FrozenBatchNorm2d) for m in b.modules())
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in b.modules())


def test_bad_names():
    with pytest.raises(ValueError, match="unknown backbone"):
        TimmBackbone("resnet_does_not_exist", allow_frozen_without_weights=True)
    with pytest.raises(ValueError, match="norm"):
        TimmBackbone("resnet18", norm="layer")
    with pytest.raises(ValueError, match="freeze_at"):
        TimmBackbone("resnet18", freeze_at=9, **RANDOM_OK)


@pytest.mark.parametrize("suffix", [".safetensors", ".pth"])
def test_weights_from_local_file(tmp_path, suffix):
    torch.manual_seed(1)
    classifier = timm.create_model("resnet18", pretrained=False, **TINY)  # the file users have: with its fc
    path = tmp_path / f"w{suffix}"
    state = classifier.state_dict()
    if suffix == ".safetensors":
        save_file(state, str(path))
    else:
        torch.save({"state_dict": state}, path)
    b = TimmBackbone("resnet18", norm="frozen_bn", weights=path, **TINY)
    assert torch.equal(b.body.conv1.weight, state["conv1.weight"])
    assert torch.equal(b.body.layer4[1].bn2.running_var, state["layer4.1.bn2.running_var"])


def test_weights_errors(tmp_path):
    with pytest.raises(BackboneWeightsError, match="not found"):
        TimmBackbone("resnet18", weights=tmp_path / "missing.safetensors", **TINY)
    other = timm.create_model("resnet18", pretrained=False)  # full-width: shapes do not fit
    save_file(other.state_dict(), str(tmp_path / "wide.safetensors"))
    with pytest.raises(BackboneWeightsError, match="wrong shape"):
        TimmBackbone("resnet18", weights=tmp_path / "wide.safetensors", **TINY)
    save_file({"conv1.weight": torch.zeros(16, 3, 7, 7), "extra.bias": torch.zeros(3)},
              str(tmp_path / "bad.safetensors"))
    with pytest.raises(BackboneWeightsError, match=r"missing.*unexpected: extra\.bias"):
        TimmBackbone("resnet18", weights=tmp_path / "bad.safetensors", **TINY)
    (tmp_path / "junk.safetensors").write_bytes(b"not a file")
    with pytest.raises(BackboneWeightsError, match="safetensors"):
        TimmBackbone("resnet18", weights=tmp_path / "junk.safetensors", **TINY)


class _Evil:
    def __reduce__(self):
        import os

        return (os.system, ("touch EVIL_MARKER",))


def test_crafted_pickle_weights_are_refused(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    path = tmp_path / "evil.pth"
    path.write_bytes(pickle.dumps({"conv1.weight": _Evil()}))
    with pytest.raises(CheckpointError, match="refused"):
        TimmBackbone("resnet18", weights=path, **TINY)
    assert not (tmp_path / "EVIL_MARKER").exists()


@pytest.mark.slow
@pytest.mark.parametrize("name", KNOWN_BACKBONES)
def test_known_backbones_build(name):
    if name.startswith("hrnet"):  # HRNet trains its BatchNorm (HRNet's segmentation recipe)
        b = TimmBackbone(name, norm="bn", freeze_at=0)
    else:
        b = TimmBackbone(name, norm="frozen_bn", freeze_at=2, allow_frozen_without_weights=True)
    assert b.strides == [4, 8, 16, 32]
    expected = {"resnet18": [64, 128, 256, 512], "hrnet_w48": [48, 96, 192, 384], "hrnet_w18_small": [16, 32, 64, 128]}
    assert b.out_channels == expected.get(name, [256, 512, 1024, 2048])


def test_hrnet_gives_its_branch_outputs_and_refuses_what_it_cannot_do():
    b = TimmBackbone("hrnet_w18_small", norm="bn", freeze_at=0)
    feats = b(torch.randn(1, 3, 64, 96))
    assert [tuple(f.shape) for f in feats.values()] == [(1, 16, 16, 24), (1, 32, 8, 12), (1, 64, 4, 6), (1, 128, 2, 3)]
    with pytest.raises(ValueError, match="no norm_layer option"):
        TimmBackbone("hrnet_w18_small", norm="gn", freeze_at=0)
    with pytest.raises(ValueError, match="not supported for 'hrnet_w18_small'"):
        TimmBackbone("hrnet_w18_small", norm="bn", freeze_at=2, allow_frozen_without_weights=True)
