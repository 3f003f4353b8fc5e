"""The newcomer's path, end to end: their own COCO panoptic data (non-contiguous category ids,
non-square images, masks in a folder of their choosing), a config that starts from a bundled one
with ``_base_``, a few iterations of training, predict on a folder, evaluate with named per-class
rows, viz, and ``panoptix.load`` on a uint8 and a float image."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

import panoptix
from panoptix.cli import main

CATEGORIES = [{"id": 7, "name": "road", "isthing": 0, "color": [128, 64, 128]},
              {"id": 19, "name": "grass", "isthing": 0, "color": [0, 160, 0]},
              {"id": 42, "name": "sky", "isthing": 0, "color": [70, 130, 180]},
              {"id": 100, "name": "car", "isthing": 1, "color": [220, 20, 60]},
              {"id": 200, "name": "sign", "isthing": 1, "color": [250, 170, 30]}]
H, W = 96, 160


def _scene(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, list[dict]]:
    """(image, ids, segments_info): three stuff bands, then 1-3 cars (boxes) and signs (discs)."""
    ids = np.zeros((H, W), np.int64)
    cuts = sorted(rng.integers(20, H - 20, size=2))
    infos = []
    for sid, (cat, rows) in enumerate(zip((42, 19, 7), (slice(0, cuts[0]), slice(cuts[0], cuts[1]),
                                                        slice(cuts[1], H))), start=1):
        ids[rows] = sid
        infos.append({"id": sid, "category_id": cat, "iscrowd": 0})
    yy, xx = np.mgrid[0:H, 0:W]
    for k in range(int(rng.integers(1, 4))):
        sid = 10 + k
        cy, cx, r = rng.integers(20, H - 20), rng.integers(20, W - 20), rng.integers(8, 16)
        if k % 2 == 0:
            mask = (abs(yy - cy) < r) & (abs(xx - cx) < 1.6 * r)
        else:
            mask = (yy - cy) ** 2 + (xx - cx) ** 2 < r * r
        ids[mask] = sid
        infos.append({"id": sid, "category_id": 100 if k % 2 == 0 else 200, "iscrowd": 0})
    colour = {c["id"]: np.array(c["color"]) for c in CATEGORIES}
    cat_of = {i["id"]: i["category_id"] for i in infos}
    image = np.zeros((H, W, 3), np.float64)
    for sid, cat in cat_of.items():
        image[ids == sid] = colour[cat]
    image = np.clip(image + rng.normal(0, 12, image.shape), 0, 255).astype(np.uint8)
    present = set(np.unique(ids).tolist())
    for info in infos:
        mask = ids == info["id"]
        ys, xs = np.nonzero(mask)
        info.update(area=int(mask.sum()), bbox=[int(xs.min()), int(ys.min()), int(np.ptp(xs)) + 1,
                                                int(np.ptp(ys)) + 1] if mask.any() else [0, 0, 0, 0])
    return image, ids, [i for i in infos if i["id"] in present]


def _write_split(root, split: str, n: int, seed: int) -> None:
    """A user's own layout: pics/SPLIT/*.jpg, masks/SPLIT/*.png, SPLIT.json."""
    rng = np.random.default_rng(seed)
    (root / "pics" / split).mkdir(parents=True)
    (root / "masks" / split).mkdir(parents=True)
    images, annotations = [], []
    for i in range(n):
        image, ids, infos = _scene(rng)
        name = f"{split}_{i:03d}"
        Image.fromarray(image).save(root / "pics" / split / f"{name}.jpg", quality=95)
        rgb = np.stack([ids % 256, ids // 256 % 256, ids // 65536], -1).astype(np.uint8)
        Image.fromarray(rgb).save(root / "masks" / split / f"{name}.png")
        images.append({"id": 1000 + i, "file_name": f"{name}.jpg", "height": H, "width": W})
        annotations.append({"image_id": 1000 + i, "file_name": f"{name}.png", "segments_info": infos})
    (root / f"{split}.json").write_text(json.dumps({"images": images, "annotations": annotations,
                                                    "categories": CATEGORIES}))


MINE = """_base_: panoptic_fpn_tiny
data:
  train: {format: coco, json: data/train.json, png_dir: data/masks/train, image_dir: data/pics/train}
  val: {format: coco, json: data/val.json, png_dir: data/masks/val, image_dir: data/pics/val}
  min_size_train: [96]
  max_size_train: 160
  num_workers: 0
solver: {max_iter: 6, batch_size: 2}
engine: {output_dir: runs/mine, eval_period: 0, checkpoint_period: 0}
"""


@pytest.mark.slow
def test_own_data_from_config_to_overlays_and_python(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    _write_split(tmp_path / "data", "train", 8, 0)
    _write_split(tmp_path / "data", "val", 4, 1)
    (tmp_path / "mine.yaml").write_text(MINE)

    assert main(["train", "--config", "mine.yaml"]) == 0
    run = tmp_path / "runs" / "mine"
    stored = json.loads((run / "config.json").read_text())
    assert stored["data"]["train"]["format"] == "coco" and stored["data"]["train"]["root"] is None  # child wins
    assert stored["model"]["neck"]["out_channels"] == 64                      # the tiny base's own settings
    assert (run / "model_final.pth").is_file() and "trained 6 iterations" in (run / "log.txt").read_text()
    trained = capsys.readouterr().out
    assert "car" in trained and "sign" in trained and "road" in trained      # named per-class rows

    assert main(["predict", "--weights", str(run), "--input", "data/pics/val", "--output", "pred",
                 "--labels", "--scale", "2"]) == 0
    assert Image.open(tmp_path / "pred" / "overlays" / "val_000.png").size[0] == 2 * W

    capsys.readouterr()
    assert main(["evaluate", "--gt-json", "data/val.json", "--gt-dir", "data/masks/val",
                 "--pred-json", "pred/panoptic_pred.json"]) == 0
    out = capsys.readouterr()
    assert "matched by file_name" in out.err                                  # stem ids vs 1000.., one line
    rows = {line.split()[0]: line.split()[1] for line in out.out.splitlines()
            if line.split() and line.split()[0] in ("road", "grass", "sky", "car", "sign")}
    assert rows.get("car") == "thing" and rows.get("road") == "stuff"
    results = json.loads((tmp_path / "pred" / "pq_results.json").read_text())
    assert results["per_class"]["100"]["name"] == "car"

    assert main(["viz", "--gt-json", "data/val.json", "--gt-dir", "data/masks/val", "--images", "data/pics/val",
                 "--pred-json", "pred/panoptic_pred.json", "--out", "viz", "--scale", "2"]) == 0
    assert len(list((tmp_path / "viz").glob("*.png"))) == 4

    predictor = panoptix.load(run, device="cpu")
    image = np.asarray(Image.open(tmp_path / "data" / "pics" / "val" / "val_001.jpg"))
    a, b = predictor(image), predictor([image.astype(np.float32) / 255])[0]
    assert np.array_equal(a.ids, b.ids) and a.ids.shape == (H, W)
    assert {s["name"] for s in a.segments} <= {c["name"] for c in CATEGORIES}
    assert a.overlay(labels=True).shape == (H, W, 3)
    coco = a.to_coco(image_id=7, file_name="val_001.png")
    assert [s["id"] for s in coco["segments_info"]] == [s["id"] for s in a.segments]
