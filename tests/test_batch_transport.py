"""Batches leave the loader's workers as pickled arrays and arrive as the same tensors."""

import pickle

import numpy as np
import torch

from panoptix.engine.batch_transport import PackedTensor, UnpackedBatches, pack_tensors, unpack_tensors
from panoptix.engine.sampler import stream_loader

from conftest import tiny_trainer


def test_pack_round_trip_keeps_values_dtypes_and_other_objects():
    batch = ([torch.arange(12, dtype=torch.uint8).view(3, 4)],
             [{"masks": torch.rand(2, 5, 5) > 0.5, "boxes": torch.rand(2, 4), "labels": torch.tensor([3, 1]),
               "half": torch.ones(2, dtype=torch.float16), "bf16": torch.ones(2, dtype=torch.bfloat16),
               "array": np.zeros(3, np.int32), "name": "a", "n": 2}])
    packed = pack_tensors(batch)
    target = packed[1][0]
    assert isinstance(packed[0][0], PackedTensor) and isinstance(target["masks"], PackedTensor)
    assert isinstance(target["bf16"], torch.Tensor)  # NumPy has no bfloat16: left as a tensor
    assert isinstance(target["array"], np.ndarray)  # an array stays an array, not a tensor
    back = unpack_tensors(pickle.loads(pickle.dumps(packed)))
    assert isinstance(back, tuple) and isinstance(back[0], list)
    for key, value in batch[1][0].items():
        got = back[1][0][key]
        assert type(got) is type(value)
        if isinstance(value, torch.Tensor):
            assert got.dtype == value.dtype and torch.equal(got, value)
    assert torch.equal(back[0][0], batch[0][0])


def test_worker_batches_equal_in_process_batches(synth_root, tmp_path):
    trainer = tiny_trainer(synth_root, tmp_path)
    inline = list(stream_loader(trainer.stream, 2, 0, 3, 0, 1, num_workers=0, seed=0))
    workers = stream_loader(trainer.stream, 2, 0, 3, 0, 1, num_workers=1, seed=0)
    assert isinstance(workers, UnpackedBatches) and len(workers) == 3
    pinned = stream_loader(trainer.stream, 2, 0, 3, 0, 1, num_workers=1, seed=0, pin_memory=True)
    assert isinstance(pinned, torch.utils.data.DataLoader)  # a CUDA loader keeps its pinned tensors
    for (images, targets), (images_w, targets_w) in zip(inline, workers, strict=True):
        assert all(isinstance(im, torch.Tensor) and torch.equal(im, w) for im, w in zip(images, images_w))
        for t, w in zip(targets, targets_w, strict=True):
            assert t.keys() == w.keys()
            assert all(isinstance(w[k], torch.Tensor) and w[k].dtype == t[k].dtype and torch.equal(t[k], w[k])
                       for k in t)
