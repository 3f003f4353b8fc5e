"""``panoptix fit-fusion``: AntVisionPS's two-level fusion (Hong et al. 2019): the per-class choice of
instance end on a held-out set, and its table."""

from __future__ import annotations

import argparse
import time

from panoptix.cli.options import add_model_options
from panoptix.errors import PanoptixError
from panoptix.jsonio import write_json

HELP = ("two-level fusion of two trained ends (AntVisionPS): per-class choice of the instance end on a held-out "
        "set, optional comparison on a test set")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--ends", nargs="+", required=True, metavar="END",
                   help="the ends (two or more): each a checkpoint, or a weighted ensemble a.pth:0.4,b.pth:1.2 "
                        "(AntVisionPS's E-UPS end is one)")
    p.add_argument("--fit-data", required=True, help="root of the held-out dataset the choice is fitted on")
    p.add_argument("--fit-split", default="val", help="the split of --fit-data")
    p.add_argument("--test-data", default=None, help="root of a test dataset: PQ of each end and of the fusion")
    p.add_argument("--test-split", default="val", help="the split of --test-data")
    p.add_argument("--fusion", default=None,
                   help="the merge of the fused outputs (default: heuristic, the paper's, with the first end's "
                        "settings)")
    p.add_argument("--limit", type=int, default=None, help="fit on the first N held-out images")
    p.add_argument("--out", default="runs/fusion/two_level.json", help="the fusion record (predict --two-level)")
    add_model_options(p, weights="none", batch_size=4)


def run(args: argparse.Namespace) -> int:
    from panoptix.data.datasets import PanopticDataset
    from panoptix.engine.build import load_end
    from panoptix.engine.fit_fusion import fit_two_level

    t0 = time.time()
    loaded = [load_end(w, args.overrides, args.device, args.imports, args.config) for w in args.ends]
    ends, device = [m for m, *_ in loaded], loaded[0][3]
    fit_set = PanopticDataset.synthetic(args.fit_data, args.fit_split) if args.fit_data else None
    if fit_set is None:
        raise PanoptixError("--fit-data: name the held-out set the per-class choice is fitted on")
    test_set = PanopticDataset.synthetic(args.test_data, args.test_split) if args.test_data else None
    record = fit_two_level(ends, [str(w) for w in args.ends], fit_set, test_set, device, args.fusion, args.limit,
                           args.batch_size)
    record["seconds"] = round(time.time() - t0, 1)
    write_json(args.out, record)
    width = max(len(c["name"]) for c in record["classes"])
    print(f"per-class choice of instance end (PQ on {record['fit']['images']} held-out images of {args.fit_data}):")
    for c in record["classes"]:
        scores = "  ".join(f"{100 * v:5.1f}" for v in c["scores"])
        print(f"  {c['name']:{width}s}  end {c['end']}  (PQ per end: {scores})")
    for row in record.get("table", []):
        print(f"{row['system']:48s} PQ {row['PQ']:5.1f}  PQ_th {row['PQ_th']:5.1f}  PQ_st {row['PQ_st']:5.1f}")
    print(f"wrote {args.out} in {record['seconds']} s; predict with it: panoptix predict --two-level {args.out}")
    return 0
