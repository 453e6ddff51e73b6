"""Every adapter method — and a model made only of structops layers (Blockdiag, Monarch,
Butterfly, ButterflyUnitary, SLTrain) — trains under DDP and FSDP2 (fully_shard) and with activation
checkpointing, on CPU with the gloo backend and 2 processes: losses, first-step gradients and
final parameters equal single-process training on the whole batch (float32 tolerance).

One spawn runs every (method, wrapper) pair (process start-up dominates).  The wrappers are
torch's own; the loop is ``structops.finetune.torchrun_example.train``, the same code the
torchrun example runs.  Marked ``distributed``: `make test` runs it in its first pass only (it
tests the wrappers and the layers' Python, not a CPU kernel variant)."""

import os
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from structops.finetune.torchrun_example import DIST_CONFIGS, train

pytestmark = pytest.mark.distributed

CASES = [(m, w, ck) for m in sorted(DIST_CONFIGS) for (w, ck) in (("ddp", False), ("fsdp2", False), ("fsdp2", True))]
CASES += [("lora", "ddp", True), ("svfit", "ddp", True), ("layers", "ddp", False), ("layers", "fsdp2", False)]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank, world, port, out_path):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        results = {}
        for method, wrap, ck in CASES:
            results[(method, wrap, ck)] = train(method, wrap, steps=3, global_batch=8, checkpoint=ck)
        if rank == 0:
            torch.save(results, out_path)
    finally:
        dist.destroy_process_group()


@pytest.fixture(scope="module")
def distributed_results(tmp_path_factory):
    out = str(tmp_path_factory.mktemp("dist") / "results.pt")
    mp.spawn(_worker, args=(2, _free_port(), out), nprocs=2, join=True)
    return torch.load(out, weights_only=False)


@pytest.fixture(scope="module")
def single_process():
    torch.set_num_threads(1)
    return {m: train(m, "none", steps=3, global_batch=8) for m in list(DIST_CONFIGS) + ["layers"]}


@pytest.mark.parametrize("method, wrap, ck", CASES, ids=[f"{m}-{w}{'-ckpt' if c else ''}" for m, w, c in CASES])
def test_distributed_training_equals_single_process(distributed_results, single_process, method, wrap, ck):
    got, ref = distributed_results[(method, wrap, ck)], single_process[method]
    assert got["adapted"] == ref["adapted"]
    # FSDP2 really shards every parameter (frozen base and adapter alike); DDP replicates
    assert got["sharded_parameters"] == (got["parameters"] if wrap == "fsdp2" else 0)
    torch.testing.assert_close(torch.tensor(got["losses"]), torch.tensor(ref["losses"]), rtol=1e-5, atol=1e-6)
    assert got["grads"].keys() == ref["grads"].keys() and got["grads"]
    for n in ref["grads"]:
        torch.testing.assert_close(got["grads"][n], ref["grads"][n], rtol=1e-4, atol=1e-6, msg=lambda s: f"{n}: {s}")
        torch.testing.assert_close(got["params"][n], ref["params"][n], rtol=1e-4, atol=1e-6, msg=lambda s: f"{n}: {s}")
    assert ref["losses"][-1] != ref["losses"][0]  # the adapters do train


def test_checkpointing_single_process_equals_plain():
    a = train("lora", "none", steps=2, checkpoint=True)
    b = train("lora", "none", steps=2, checkpoint=False)
    for n in a["grads"]:
        torch.testing.assert_close(a["grads"][n], b["grads"][n], rtol=1e-5, atol=1e-7)
