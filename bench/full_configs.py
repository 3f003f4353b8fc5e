"""Every bundled full-size config runs at its real input size: 2 training iterations with batch 1,
one prediction and a checkpoint round trip, on random weights (the bench never downloads).

    python bench/full_configs.py [--configs a,b] [--device cpu|cuda] [--amp float16|bfloat16]

COCO configs get COCO's 133 categories (the sample's category file, else the synthetic ones) and
an 800x1333 image; the ADE20K config 150 stuff classes, a 520x520 training crop and a 520x693 test
image. The scene comes from the synthetic renderer at that size, its categories mapped onto the
dataset's. Prints s/iteration (training), s/image (prediction), peak memory and parameter count;
writes bench/out/full_configs.json. A config that fails is a row with its error, not a stop.
"""

from __future__ import annotations

import argparse
import io
import json
import resource
import sys
import time
import traceback
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from panoptix.config import bundled_configs, load_config  # noqa: E402
from panoptix.data.meta import Category, DatasetMeta  # noqa: E402
from panoptix.data.sample import PanopticSample, Segment  # noqa: E402
from panoptix.data.synthetic import SynthConfig, render_scene, synthetic_meta  # noqa: E402
from panoptix.engine.build import build_model  # noqa: E402

COCO_CATEGORIES = REPO.parent / "shared" / "data" / "coco_panoptic_val2017_sample" / "panoptic_coco_categories.json"


def dataset_meta(cfg: dict) -> DatasetMeta:
    """ADE20K's 150 classes for a scene parser, COCO's 133 categories otherwise."""
    if cfg["model"]["name"] == "semantic":
        return DatasetMeta([Category(i, f"class_{i}", False, (i, 2 * i % 256, 3 * i % 256)) for i in range(1, 151)])
    if COCO_CATEGORIES.is_file():
        return DatasetMeta.from_categories(json.loads(COCO_CATEGORIES.read_text()), name="coco")
    return synthetic_meta()


def sample_at(meta: DatasetMeta, height: int, width: int, seed: int = 0) -> PanopticSample:
    """A synthetic scene rendered at (height, width), its categories mapped onto ``meta``'s."""
    image, ids, infos = render_scene(np.random.default_rng(seed), SynthConfig(size=height, width=width))
    synth = synthetic_meta()
    things, stuff = list(meta.thing_ids) or list(meta.stuff_ids), list(meta.stuff_ids)
    mapping = {c: things[i % len(things)] for i, c in enumerate(synth.thing_ids)}
    mapping.update({c: stuff[i % len(stuff)] for i, c in enumerate(synth.stuff_ids)})
    segments = [Segment(int(s["id"]), mapping[s["category_id"]], bool(s["iscrowd"]), tuple(s["bbox"]), s["area"])
                for s in infos]
    return PanopticSample(ids, segments, image)


def sizes(cfg: dict) -> tuple[tuple[int, int], tuple[int, int]]:
    """(training image size, test image size) the config runs at."""
    data, pre = cfg["data"], cfg["model"]["preprocess"]
    if data.get("crop_size"):
        train = tuple(int(v) for v in data["crop_size"])
    else:
        short = int(max(data["min_size_train"]))
        train = (short, min(int(data["max_size_train"]), round(short * 4 / 3 * 1.25)))
    short = int(pre["min_size_test"])
    test = (short, min(int(pre["max_size_test"]), round(short * 4 / 3 * (1.25 if short >= 800 else 1))))
    return train, test


def peak_memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _train_two(model: torch.nn.Module, sample: PanopticSample, device: torch.device, amp: str | None) -> float:
    """Seconds per iteration of 2 SGD steps at batch 1 (the second one timed)."""
    targets = model.target_builder()(sample)
    image = torch.from_numpy(sample.image).permute(2, 0, 1).to(device)
    targets = {k: v.to(device) for k, v in targets.items()}
    model.train()
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=1e-5, momentum=0.9)
    dtype = getattr(torch, amp) if amp else torch.float32
    scaler = torch.amp.GradScaler("cuda", enabled=amp == "float16" and device.type == "cuda")
    seconds = 0.0
    for _ in range(2):
        start = time.perf_counter()
        with torch.autocast(device.type, dtype=dtype, enabled=amp is not None and device.type == "cuda"):
            losses = model([image], [targets])
        opt.zero_grad()
        scaler.scale(sum(losses.values())).backward()
        scaler.step(opt)
        scaler.update()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        seconds = time.perf_counter() - start
        if not all(torch.isfinite(v).all() for v in losses.values()):
            raise RuntimeError(f"non-finite loss: {[k for k, v in losses.items() if not torch.isfinite(v).all()]}")
    return seconds


def run_config(name: str, device: torch.device, amp: str | None) -> dict:
    cfg = load_config(name)
    meta = dataset_meta(cfg)
    (th, tw), (eh, ew) = sizes(cfg)
    torch.manual_seed(0)
    model = build_model(cfg, meta, weights_from_checkpoint=True).to(device)
    params = sum(p.numel() for p in model.parameters())
    train_s = _train_two(model, sample_at(meta, th, tw), device, amp)
    test = torch.from_numpy(sample_at(meta, eh, ew, seed=1).image).permute(2, 0, 1).to(device)
    model.eval()
    with torch.no_grad():
        start = time.perf_counter()
        before = model([test])[0]
        predict_s = time.perf_counter() - start
    buffer = io.BytesIO()
    torch.save({"model": model.state_dict(), "config": cfg}, buffer)
    buffer.seek(0)
    again = build_model(cfg, meta, weights_from_checkpoint=True).to(device).eval()
    again.load_state_dict(torch.load(buffer, weights_only=True, map_location=device)["model"])
    with torch.no_grad():
        after = again([test])[0]
    same = torch.equal(before.ids.cpu(), after.ids.cpu())
    return {"config": name, "train_size": [th, tw], "test_size": [eh, ew], "params_m": params / 1e6,
            "train_s_per_iter": train_s, "predict_s": predict_s, "peak_mem_mb": peak_memory_mb(device),
            "checkpoint_round_trip": same, "segments": len(before.segments)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--configs", default=None, help="comma-separated names (default: every non-tiny bundled config)")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--amp", default=None, choices=("float16", "bfloat16"), help="autocast dtype (CUDA only)")
    ap.add_argument("--out", default=str(REPO / "bench" / "out" / "full_configs.json"))
    args = ap.parse_args()
    device = torch.device(("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device)
    names = args.configs.split(",") if args.configs else [n[:-5] for n in bundled_configs() if "_tiny" not in n]
    if len(names) > 1:  # one process per config, so that each row's peak memory is its own
        rows = [_in_subprocess(name, args) for name in names]
    else:
        rows = [_one(names[0], device, args.amp)]
    report(rows, device, args.amp, Path(args.out))
    return 1 if any("error" in r for r in rows) else 0


def _one(name: str, device: torch.device, amp: str | None) -> dict:
    print(f"{name} ...", flush=True)
    try:
        return run_config(name, device, amp)
    except Exception as err:  # a failing config is a row: the table shows what breaks
        traceback.print_exc()
        return {"config": name, "error": f"{type(err).__name__}: {err}"}


def _in_subprocess(name: str, args: argparse.Namespace) -> dict:
    import subprocess
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "row.json"
        command = [sys.executable, __file__, "--configs", name, "--device", args.device, "--out", str(out)]
        subprocess.run(command + (["--amp", args.amp] if args.amp else []), check=False)
        if not out.is_file():
            return {"config": name, "error": "the process died (out of memory?)"}
        return json.loads(out.read_text())["rows"][0]


def report(rows: list[dict], device: torch.device, amp: str | None, out: Path) -> None:
    dev = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU ({torch.get_num_threads()} threads)"
    print(f"\ndevice: {dev}; amp: {amp if device.type == 'cuda' else 'off (CPU)'}; random weights, batch 1")
    print(f"{'config':36s} {'train HxW':>10s} {'s/iter':>7s} {'test HxW':>10s} {'s/img':>6s} {'peak MB':>8s} "
          f"{'params M':>8s} {'ckpt':>5s}")
    for r in rows:
        if "error" in r:
            print(f"{r['config']:36s} FAILED: {r['error'][:120]}")
            continue
        print(f"{r['config']:36s} {'x'.join(map(str, r['train_size'])):>10s} {r['train_s_per_iter']:7.2f} "
              f"{'x'.join(map(str, r['test_size'])):>10s} {r['predict_s']:6.2f} {r['peak_mem_mb']:8.0f} "
              f"{r['params_m']:8.1f} {'same' if r['checkpoint_round_trip'] else 'DIFF':>5s}")
    print("peak memory: CUDA memory allocated on a GPU, the process's peak resident set on a CPU (one process "
          "per config)")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"device": dev, "amp": amp, "rows": rows}, indent=1))
    print(f"results: {out}")


if __name__ == "__main__":
    sys.exit(main())
