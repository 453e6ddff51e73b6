"""Multi-process fine-tuning with torch.distributed: DDP or FSDP2 (``fully_shard``) over a
structops-adapted model, optionally with activation checkpointing.  No structops-specific
distribution code: the adapter layers are ordinary modules whose custom ops trace and run
under both wrappers.

    torchrun --nproc-per-node 2 -m structops.finetune.torchrun_example --method svfit --wrap fsdp2
    torchrun --nproc-per-node 2 -m structops.finetune.torchrun_example --method lora --wrap ddp --checkpoint

Backend: nccl on CUDA, gloo on CPU (``--device cpu`` forces the CPU).  Each rank takes its
contiguous share of every global batch; the loss is the mean over the global batch, so
gradients equal single-process training on the whole batch (``tests/test_adapt_distributed.py``
checks losses and gradients within float32 tolerance, gloo, 2 processes).

``--method layers`` trains a model made only of structops layers (``StructuredLayersNet``) from
scratch instead of adapting one.

``train(method, wrap, steps, global_batch, checkpoint, config, device) -> dict`` is the same loop
as a function (``wrap="none"`` is the single-process reference): the losses, the first step's
gradients and the final trainable parameters by name (full tensors on every rank).
"""

from __future__ import annotations

import argparse
import os

import torch
import torch.distributed as dist
import torch.nn.functional as F

from .adapt import adapt, adapted_modules, trainable_parameters
from .example_model import ADAPT_TARGETS, DigitsTransformer, StructuredLayersNet

__all__ = ["train", "synthetic_batches", "main"]

DIST_CONFIGS = {
    "lora": {"r": 4, "alpha": 8}, "randlora": {"r": 8, "alpha": 16}, "vera": {"r": 16},
    "sltrain": {"rank": 4, "density": 0.05}, "monarch": {"nblocks": 4}, "butterfly": {}, "svfit": {"energy": 0.9},
    "welore": {"target_reduction": 0.3}, "sst": {"r": 4},
}


def synthetic_batches(steps: int, global_batch: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(global_batch, 8, 8, generator=g), torch.randint(0, 10, (global_batch,), generator=g))
            for _ in range(steps)]


def _full(t: torch.Tensor) -> torch.Tensor:
    return t.full_tensor() if hasattr(t, "full_tensor") else t


def train(method: str, wrap: str = "none", steps: int = 3, global_batch: int = 8, checkpoint: bool = False,
          config: dict | None = None, device: str = "cpu", lr: float = 0.05, seed: int = 0) -> dict:
    if wrap not in ("none", "ddp", "fsdp2"):
        raise ValueError(f"train: wrap must be 'none', 'ddp' or 'fsdp2', got {wrap!r}")
    torch.manual_seed(seed)
    if method == "layers":  # structops layers trained from scratch (no adapter)
        model = StructuredLayersNet().to(device)
    else:
        model = DigitsTransformer(checkpoint=checkpoint).to(device)
        adapt(model, method, target_modules=ADAPT_TARGETS, **(DIST_CONFIGS[method] if config is None else config))
    names = [n for n, p in model.named_parameters() if p.requires_grad]
    rank, world = (dist.get_rank(), dist.get_world_size()) if wrap != "none" else (0, 1)
    if global_batch % world:
        raise ValueError(f"train: global_batch {global_batch} must divide evenly over {world} ranks")
    if wrap == "ddp":
        from torch.nn.parallel import DistributedDataParallel

        wrapped = DistributedDataParallel(model, device_ids=None if device == "cpu" else [torch.device(device).index])
    elif wrap == "fsdp2":
        from torch.distributed.device_mesh import init_device_mesh
        from torch.distributed.fsdp import fully_shard

        mesh = init_device_mesh("cpu" if device == "cpu" else "cuda", (world,))
        for blk in model.blocks:
            fully_shard(blk, mesh=mesh)
        fully_shard(model, mesh=mesh)
        wrapped = model
    else:
        wrapped = model
    # FSDP2 replaces every parameter by a DTensor sharded on dim 0 across the mesh
    sharded = sum(1 for p in model.parameters() if any(pl.is_shard() for pl in getattr(p, "placements", ())))
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.SGD(params, lr=lr)
    losses, first_grads = [], {}
    share = global_batch // world
    for step, (x, y) in enumerate(synthetic_batches(steps, global_batch, seed + 1)):
        xs, ys = x[rank * share:(rank + 1) * share].to(device), y[rank * share:(rank + 1) * share].to(device)
        opt.zero_grad(set_to_none=True)
        loss = F.cross_entropy(wrapped(xs), ys)
        loss.backward()
        if step == 0:
            first_grads = {n: _full(p.grad).detach().clone().cpu()
                           for n, p in zip(names, (q for q in model.parameters() if q.requires_grad))}
        opt.step()
        g = loss.detach().clone()
        if wrap != "none":
            dist.all_reduce(g)
            g /= world
        losses.append(float(g))
    final = {n: _full(p).detach().clone().cpu()
             for n, p in zip(names, (q for q in model.parameters() if q.requires_grad))}
    return {"losses": losses, "grads": first_grads, "params": final,
            "adapted": adapted_modules(model) if method != "layers" else [],
            "trainable": trainable_parameters(model).trainable, "sharded_parameters": sharded,
            "parameters": sum(1 for _ in model.parameters())}


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--method", default="lora", choices=sorted(DIST_CONFIGS) + ["layers"],
                    help="an adapter method, or 'layers' (structops layers trained from scratch)")
    ap.add_argument("--wrap", default="ddp", choices=["ddp", "fsdp2"])
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--global-batch", type=int, default=32)
    ap.add_argument("--checkpoint", action="store_true", help="activation checkpointing per block")
    ap.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    a = ap.parse_args(argv)
    use_cuda = (a.device or ("cuda" if torch.cuda.is_available() else "cpu")) == "cuda"
    dist.init_process_group("nccl" if use_cuda else "gloo")
    device = f"cuda:{int(os.environ.get('LOCAL_RANK', 0))}" if use_cuda else "cpu"
    if use_cuda:
        torch.cuda.set_device(device)
    out = train(a.method, a.wrap, a.steps, a.global_batch, a.checkpoint, device=device)
    if dist.get_rank() == 0:
        print(f"{a.method} under {a.wrap}{' + checkpointing' if a.checkpoint else ''} on {dist.get_world_size()} "
              f"ranks: {out['trainable']:,} trainable parameters, loss {out['losses'][0]:.4f} -> {out['losses'][-1]:.4f}")
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
