"""One registry per interface: a slot refuses a component of another interface by name, every member
of a registry takes the same required inputs, and the Mask R-CNN family shares one ``rpn:`` section
(old checkpoints with flat ``rpn_*`` keys still load)."""

from __future__ import annotations

import inspect

import pytest
import torch

from panoptix.config import load_config, upgrade_stored_model
from panoptix.data.synthetic import synthetic_meta
from panoptix.engine.build import build_model, load_model
from panoptix.registry import INTERFACES, TASKS, ConfigError

WRONG_SLOTS = {
    "model.instance_head.name=fcos": ("panoptic_fpn_tiny", "'fcos' is in the dense detector registry, not the RoI "
                                      "head registry; registered RoI heads: cascade_mask_rcnn, htc, mask_rcnn"),
    "model.instance_head.name=roi_classifier": ("panoptic_fpn_tiny", "in the box classifier registry"),
    "model.ranking_head.name=upsnet": ("panoptic_fpn_tiny", "registered ranking heads: spatial_ranking "),
    "model.upsnet_head.name=spatial_ranking": ("panoptic_fpn_tiny", "registered UPSNet panoptic heads: upsnet "),
    "model.detector.name=mask_rcnn": ("ciae_tiny", "in the RoI head registry, not the dense detector registry"),
    "model.classifier.name=fcos": ("ciae_tiny", "registered box classifiers: roi_classifier "),
    "model.decoder.name=danet": ("ainnoseg_tiny", "in the context head registry, not the decode head registry; "
                                 "registered decode heads: fcn, ocr "),
    "model.context.name=ocr": ("ainnoseg_tiny", "registered context heads: danet "),
}


@pytest.mark.parametrize("override", WRONG_SLOTS, ids=list(WRONG_SLOTS))
def test_a_slot_refuses_a_component_of_another_interface(override):
    config, message = WRONG_SLOTS[override]
    with pytest.raises(ConfigError) as err:
        load_config(config, [override])
    assert message in str(err.value) and "\n" not in str(err.value)


def _required_inputs(component) -> list[str]:
    call = component.forward if isinstance(component, type) else component
    kinds = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    return [n for n, p in inspect.signature(call).parameters.items()
            if n != "self" and p.kind in kinds and p.default is inspect.Parameter.empty]


@pytest.mark.parametrize("registry", [r for r in INTERFACES if r is not TASKS], ids=lambda r: r.kind)
def test_every_member_of_a_registry_takes_the_same_inputs(registry):
    calls = {name: _required_inputs(registry.get(name)) for name in registry.names()}
    assert len({tuple(c) for c in calls.values()}) == 1, calls


def test_rpn_settings_live_in_one_section_and_flat_keys_get_a_hint():
    cfg = load_config("panoptic_fpn_tiny", ["model.instance_head.name=cascade_mask_rcnn",
                                            "model.instance_head.rpn.nms=0.6"])
    rpn = cfg["model"]["instance_head"]["rpn"]
    assert rpn["nms"] == 0.6 and rpn["anchor_sizes"] == [8, 16, 32, 64, 128] and rpn["pre_nms_test"] == 300
    assert not [k for k in cfg["model"]["instance_head"] if k.startswith("rpn_") or k == "anchor_sizes"]
    model = build_model(cfg, synthetic_meta())
    assert model.instance_head.rpn.nms_thresh == 0.6 and model.instance_head.rpn._pre_nms_top_n["testing"] == 300
    with pytest.raises(ConfigError, match=r"model.instance_head.rpn_nms .*\(did you mean rpn.nms\?\)"):
        load_config("panoptic_fpn_tiny", ["model.instance_head.rpn_nms=0.5"])
    with pytest.raises(ConfigError, match=r"\(did you mean rpn.anchor_sizes\?\)"):
        load_config("panoptic_fpn_tiny", ["model.instance_head.anchor_sizes=[8,16,32,64,128]"])


def _flat_rpn(model_cfg: dict) -> dict:
    """The stored model section as checkpoints wrote it before the ``rpn:`` sub-section."""
    head = dict(model_cfg["instance_head"])
    rpn = head.pop("rpn")
    flat = {(k if k in ("anchor_sizes", "aspect_ratios") else f"rpn_{k}"): v for k, v in rpn.items()}
    return {**model_cfg, "instance_head": {**head, **flat}}


def test_a_checkpoint_with_flat_rpn_keys_builds_the_same_model(tmp_path):
    cfg = load_config("panoptic_fpn_tiny", ["model.instance_head.rpn.post_nms_test=77"])
    meta = synthetic_meta()
    torch.manual_seed(0)
    model = build_model(cfg, meta).eval()
    legacy = _flat_rpn(cfg["model"])
    assert "rpn_post_nms_test" in legacy["instance_head"] and upgrade_stored_model(legacy) == cfg["model"]
    path = tmp_path / "legacy.pth"
    torch.save({"model": model.state_dict(), "config": {**cfg, "model": legacy}, "meta": meta.to_json()}, path)
    loaded = load_model(path, device="cpu")[0].eval()
    assert loaded.instance_head.rpn._post_nms_top_n["testing"] == 77
    image = torch.randint(0, 256, (3, 64, 64), dtype=torch.uint8)
    with torch.no_grad():
        a, b = model([image])[0], loaded([image])[0]
    assert torch.equal(a.ids, b.ids) and a.segments == b.segments and len(a.segments) > 0
