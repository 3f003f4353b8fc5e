"""Inference latency and training throughput: panoptix's R50 two-stage system against torchvision's
maskrcnn_resnet50_fpn, same device, same run, same images; then the panoptic systems against each
other: the CIAE one-stage system and the two-stage system at the same backbone (R50-FPN) and input
size, end to end, network and merge separately, and both exported whole to ONNX under onnxruntime
(with the share of pixels whose segment id equals PyTorch's).

All models are randomly initialised (no downloads); box/mask work is bounded the same way in both
(RPN 1000 proposals at test time, 100 detections). Ours also runs the semantic head and the fusion,
so it does strictly more work than the peer. In the panoptic table the score thresholds are 0, so
that both systems merge the same number of instances (100) whatever random weights score.

    python bench/latency.py                       # 800x1333 on a GPU; 400x667 on CPU (said in the table)
    python bench/latency.py --size 800 1333 --device cpu
    python bench/latency.py --panoptic-only --panoptic-size 512 683   # CIAE vs two-stage (+ both in ONNX)
    python bench/latency.py --training-only --repeat 10               # the R50 table alone
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from panoptix.config import load_config  # noqa: E402
from panoptix.data.meta import DatasetMeta  # noqa: E402
from panoptix.data.synthetic import synthetic_meta  # noqa: E402
from panoptix.engine.build import build_model  # noqa: E402

COCO_CATEGORIES = REPO.parent / "shared" / "data" / "coco_panoptic_val2017_sample" / "panoptic_coco_categories.json"


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _targets(n: int, h: int, w: int, num_things: int, num_sem: int, device: torch.device, gen: torch.Generator):
    """Random boxes with filled box masks and a random blocky semantic map, one dict per image."""
    out = []
    for _ in range(n):
        k = 8
        xy = torch.rand(k, 2, generator=gen) * torch.tensor([w * 0.7, h * 0.7])
        wh = 16 + torch.rand(k, 2, generator=gen) * torch.tensor([w * 0.3, h * 0.3])
        boxes = torch.cat([xy, xy + wh], 1).floor()
        masks = torch.zeros(k, h, w, dtype=torch.uint8)
        for i, (x0, y0, x1, y1) in enumerate(boxes.long().tolist()):
            masks[i, y0:y1, x0:x1] = 1
        sem = torch.randint(0, num_sem, (h // 32 + 1, w // 32 + 1), generator=gen)
        sem = sem.repeat_interleave(32, 0).repeat_interleave(32, 1)[:h, :w]
        labels = torch.randint(0, num_things, (k,), generator=gen)
        out.append({"boxes": boxes.to(device), "labels": labels.to(device), "masks": masks.to(device),
                    "semantic": sem.to(device)})
    return out


def _time(fn, device: torch.device, warmup: int, repeat: int) -> list[float]:
    """Seconds of ``repeat`` calls of ``fn`` after ``warmup`` untimed ones."""
    return _interleaved([fn], device, warmup, repeat)[0]


def _arguments() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, nargs=2, default=None, help="H W (default 800 1333 on GPU, 400 667 on CPU)")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--train-batch", type=int, default=None, help="images per training step (GPU 4, CPU 2)")
    ap.add_argument("--repeat", type=int, default=None)
    ap.add_argument("--amp", action="store_true", help="float16 autocast for both (CUDA)")
    ap.add_argument("--out", default=str(REPO / "bench" / "out" / "latency.json"))
    ap.add_argument("--panoptic-size", type=int, nargs=2, default=None,
                    help="H W of the CIAE vs two-stage table (default 800 1333 on GPU, 512 683 on CPU)")
    ap.add_argument("--panoptic-only", action="store_true", help="only the CIAE vs two-stage table")
    ap.add_argument("--training-only", action="store_true", help="only the R50 table against torchvision")
    ap.add_argument("--skip-onnx", action="store_true", help="no ONNX export / onnxruntime row")
    return ap.parse_args()


def main() -> int:
    args = _arguments()
    auto = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(auto if args.device == "auto" else args.device)
    gpu = device.type == "cuda"
    h, w = args.size or ((800, 1333) if gpu else (400, 667))
    batch = args.train_batch or (4 if gpu else 2)
    repeat = args.repeat or (20 if gpu else 5)
    warmup = 5 if gpu else 1
    amp = args.amp and gpu
    meta = DatasetMeta.from_json(COCO_CATEGORIES) if COCO_CATEGORIES.is_file() else synthetic_meta()
    ph, pw = args.panoptic_size or ((800, 1333) if gpu else (512, 683))
    panoptic = [] if args.training_only else panoptic_rows(meta, ph, pw, device, warmup, repeat, amp,
                                                            not args.skip_onnx)
    if args.panoptic_only:
        return report_panoptic(panoptic, device, ph, pw, repeat, Path(args.out).with_name("latency_panoptic.json"))

    rows = training_rows(meta, h, w, batch, device, warmup, repeat, amp)
    base = rows[1]
    dev_name = torch.cuda.get_device_name(device) if gpu else f"CPU ({torch.get_num_threads()} threads)"
    print(f"device: {dev_name}; images {h}x{w}; training batch {batch}; amp {amp}; "
          f"median of {repeat} (inference) / {max(3, repeat // 2)} (training)")
    if not gpu:
        print("CPU run: smaller images than the 800x1333 of the papers; ratios only, absolute times are not "
              "GPU figures")
    print(f"{'model':48s} {'infer ms/img':>12s} {'vs peer':>8s} {'train img/s':>12s} {'vs peer':>8s} "
          f"{'paired':>7s}")
    for r in rows:
        paired = f"{r['train_ratio_paired']:6.2f}x" if "train_ratio_paired" in r else f"{'':7s}"
        print(f"{r['model']:48s} {r['infer_ms']:12.1f} {r['infer_ms'] / base['infer_ms']:7.2f}x "
              f"{r['train_img_s']:12.2f} {r['train_img_s'] / base['train_img_s']:7.2f}x {paired}")
    print("paired: median over the training steps of (peer's step time / ours), the two models taking turns")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"device": dev_name, "size": [h, w], "batch": batch, "amp": amp, "rows": rows},
                              indent=1))
    print(f"results: {out}")
    if args.training_only:
        return 0
    return report_panoptic(panoptic, device, ph, pw, repeat, out.with_name("latency_panoptic.json"))


def training_rows(meta: DatasetMeta, h: int, w: int, batch: int, device: torch.device, warmup: int, repeat: int,
                  amp: bool) -> list[dict]:
    """Inference ms/image and training images/s of our R50 two-stage system and torchvision's
    maskrcnn_resnet50_fpn, random weights, same images."""
    from torchvision.models import resnet50
    from torchvision.models.detection.backbone_utils import _resnet_fpn_extractor
    from torchvision.models.detection.mask_rcnn import MaskRCNN
    from torchvision.ops.misc import FrozenBatchNorm2d

    torch.manual_seed(0)
    # random weights: latency does not depend on them, and the bench never downloads
    cfg = load_config("panoptic_fpn_r50", [f"model.preprocess.min_size_test={min(h, w)}",
                                           f"model.preprocess.max_size_test={max(h, w)}"])
    ours = build_model(cfg, meta, weights_from_checkpoint=True).to(device)
    # maskrcnn_resnet50_fpn as torchvision builds it with pretrained weights: frozen BatchNorm, stem and
    # res2 frozen (its builder would switch to trainable BatchNorm everywhere without weights).
    peer_backbone = _resnet_fpn_extractor(resnet50(norm_layer=FrozenBatchNorm2d), trainable_layers=3)
    peer = MaskRCNN(peer_backbone, num_classes=meta.num_things + 1, min_size=min(h, w), max_size=max(h, w)).to(device)
    gen = torch.Generator().manual_seed(0)
    image = torch.rand(3, h, w, generator=gen).to(device)
    train_images = [torch.rand(3, h, w, generator=gen).to(device) for _ in range(batch)]
    targets = _targets(batch, h, w, meta.num_things, 1 + meta.num_stuff, device, gen)
    peer_targets = [{"boxes": t["boxes"], "labels": t["labels"] + 1, "masks": t["masks"]} for t in targets]
    models = (("panoptix two_stage R50 (panoptic)", ours, targets),
              ("torchvision maskrcnn_resnet50_fpn (instances)", peer, peer_targets))
    rows = [{"model": name, "infer_ms": 1000 * statistics.median(_inference_times(model, image, device, warmup,
                                                                                  repeat, amp))}
            for name, model, _ in models]
    steps = [_training_step(model, train_images, tg, device, amp) for _, model, tg in models]
    times = _interleaved(steps, device, warmup, max(3, repeat // 2))
    for row, t in zip(rows, times):
        row["train_img_s"] = len(train_images) / statistics.median(t)
        row["train_s"] = t
    # the ratio of each pair of neighbouring steps, so that the host's drift (large on a shared VM)
    # hits both sides of every ratio alike
    rows[0]["train_ratio_paired"] = statistics.median(p / o for o, p in zip(*times))
    return rows


def _inference_times(model: torch.nn.Module, image: torch.Tensor, device: torch.device, warmup: int, repeat: int,
                     amp: bool) -> list[float]:
    model.eval()

    def infer():
        with torch.no_grad(), torch.autocast(device.type, dtype=torch.float16, enabled=amp):
            model([image])

    return _time(infer, device, warmup, repeat)


def _training_step(model: torch.nn.Module, train_images: list[torch.Tensor], targets: list[dict],
                   device: torch.device, amp: bool):
    """One SGD step of ``model`` in training mode on the batch (AMP float16 with a GradScaler when ``amp``)."""
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=1e-4, momentum=0.9)
    scaler = torch.amp.GradScaler("cuda", enabled=amp)

    def step():
        model.train()
        with torch.autocast(device.type, dtype=torch.float16, enabled=amp):
            losses = model(train_images, targets)
        opt.zero_grad()
        scaler.scale(sum(losses.values())).backward()
        scaler.step(opt)
        scaler.update()

    return step


def _interleaved(steps: list, device: torch.device, warmup: int, repeat: int) -> list[list[float]]:
    """Seconds of each step function, ``repeat`` times, the functions taking turns (A B A B ...)."""
    for fn in steps:
        for _ in range(warmup):
            fn()
    times: list[list[float]] = [[] for _ in steps]
    for _ in range(repeat):
        for fn, out in zip(steps, times):
            _sync(device)
            t = time.perf_counter()
            fn()
            _sync(device)
            out.append(time.perf_counter() - t)
    return times


def panoptic_rows(meta: DatasetMeta, h: int, w: int, device: torch.device, warmup: int, repeat: int, amp: bool,
                  onnx: bool) -> list[dict]:
    """End-to-end, network and merge ms/image of the two-stage and CIAE R50 systems, CIAE with the
    optional box classifier, and the systems in ONNX."""
    gen = torch.Generator().manual_seed(1)
    image = torch.rand(3, h, w, generator=gen).to(device)
    systems = (("two_stage R50-FPN (Panoptic FPN, heuristic merge)", "panoptic_fpn_r50",
                ["model.fusion.score_thresh=0.0", "model.instance_head.box_score_thresh=0.0"]),
               ("two_stage R50-FPN (UPSNet head and merge)", "panoptic_fpn_r50",
                ["model.instance_head.box_score_thresh=0.0", "model.semantic_variant=all",
                 "model.upsnet_head={name: upsnet}",
                 "model.fusion={_delete_: true, name: upsnet, score_thresh: 0.0}"]),
               ("CIAE R50-FPN (one-stage, embedding merge)", "ciae_r50", ["model.detector.score_thresh=0.0"]),
               ("CIAE R50-FPN + RoIAlign box classifier", "ciae_r50",
                ["model.detector.score_thresh=0.0", "model.classifier={name: roi_classifier}",
                 "model.instance_category=classifier"]))
    rows = []
    for name, config, extra in systems:
        torch.manual_seed(0)
        cfg = load_config(config, [f"model.preprocess.min_size_test={min(h, w)}",
                                   f"model.preprocess.max_size_test={max(h, w)}", *extra])
        model = build_model(cfg, meta, weights_from_checkpoint=True).to(device).eval()

        def run(fn):
            with torch.no_grad(), torch.autocast(device.type, dtype=torch.float16, enabled=amp):
                return fn()

        end_to_end = _time(lambda: run(lambda: model([image])), device, warmup, repeat)
        network = _time(lambda: run(lambda: model.predict_raw([image])), device, warmup, repeat)
        raw = run(lambda: model.predict_raw([image]))[0]
        merge = _time(lambda: run(lambda: model.fuse(raw)), device, warmup, repeat)
        rows.append({"system": name, "config": config, "end_to_end_ms": 1000 * statistics.median(end_to_end),
                     "network_ms": 1000 * statistics.median(network), "merge_ms": 1000 * statistics.median(merge),
                     "instances": len(raw.instances), "runtime": "PyTorch"})
        if onnx and getattr(model, "classifier", None) is None:
            rows.append(_onnx_row(model, config, h, w, image, repeat, name))
    return rows


def _onnx_row(model, config: str, h: int, w: int, image: torch.Tensor, repeat: int, name: str) -> dict:
    """The system exported whole, run by onnxruntime on the CPU: ms/image, and the share of pixels whose
    segment id equals PyTorch's on the bench image."""
    import tempfile

    try:
        import onnxruntime as ort
    except ImportError:
        return {"system": name, "runtime": "onnxruntime", "skipped": "onnxruntime is not installed"}
    from panoptix.engine.export import export_onnx

    model = model.cpu()
    image = image.cpu()
    with tempfile.TemporaryDirectory() as tmp:
        report = export_onnx(model, Path(tmp) / "model.onnx", (h, w))
        session = ort.InferenceSession(report["path"], providers=["CPUExecutionProvider"])
        feed = {"image": image.numpy()}
        times = _time(lambda: session.run(None, feed), torch.device("cpu"), 1, repeat)
        theirs = torch.from_numpy(session.run(None, feed)[0])
    with torch.no_grad():
        ours = model([image])[0]
    return {"system": name, "config": config, "runtime": f"onnxruntime CPU ({report['exporter']})",
            "end_to_end_ms": 1000 * statistics.median(times), "network_ms": None, "merge_ms": None,
            "instances": None, "export_seconds": report["seconds"], "segments": len(ours.segments),
            "equal_pixels": float((theirs == ours.ids).float().mean())}


def report_panoptic(rows: list[dict], device: torch.device, h: int, w: int, repeat: int, out: str | Path) -> int:
    gpu = device.type == "cuda"
    dev_name = torch.cuda.get_device_name(device) if gpu else f"CPU ({torch.get_num_threads()} threads)"
    print(f"\npanoptic systems at equal backbone and size: {dev_name}; images {h}x{w}; batch 1; median of {repeat}")
    base = rows[0]
    print(f"{'system':52s} {'runtime':34s} {'end-to-end ms':>13s} {'vs 2-stage':>10s} {'network ms':>10s} "
          f"{'merge ms':>9s} {'vs 2-stage':>10s}")
    for r in rows:
        if r.get("skipped"):
            print(f"{r['system']:52s} {r['runtime']:34s} skipped: {r['skipped']}")
            continue
        net = f"{r['network_ms']:10.1f}" if r["network_ms"] is not None else f"{'-':>10s}"
        merge = f"{r['merge_ms']:9.2f} {r['merge_ms'] / base['merge_ms']:9.2f}x" if r["merge_ms"] is not None \
            else f"{'-':>9s} {'-':>10s}"
        agree = f" {100 * r['equal_pixels']:.2f}% of pixels as PyTorch ({r['segments']} segments)" \
            if "equal_pixels" in r else ""
        print(f"{r['system']:52s} {r['runtime']:34s} {r['end_to_end_ms']:13.1f} "
              f"{r['end_to_end_ms'] / base['end_to_end_ms']:9.2f}x {net} {merge}{agree}")
    if not gpu:
        print("CPU run: absolute times are not GPU figures; the seed's are 80 vs 121 ms at 800 px on a 2080Ti")
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"device": dev_name, "size": [h, w], "repeat": repeat, "rows": rows}, indent=1))
    print(f"results: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
