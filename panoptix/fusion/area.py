"""The stuff area limit every merge applies: stuff segments with fewer pixels become VOID."""

from __future__ import annotations


def stuff_area_limit(size: tuple[int, int], stuff_min_area: float,
                     stuff_min_area_fraction: float | None = None) -> float:
    """Pixels under which a stuff segment of an image of ``size`` (H, W) becomes VOID: ``stuff_min_area``
    (COCO's 4096 px), or ``stuff_min_area_fraction`` of H*W when it is set (the limit for images far from
    COCO's size, e.g. 0.0038 = 4096 / (800 * 1333))."""
    if stuff_min_area_fraction is not None:
        return float(stuff_min_area_fraction * size[0] * size[1])
    return float(stuff_min_area)


__all__ = ["stuff_area_limit"]
