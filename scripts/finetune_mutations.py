"""Mutation check of the fine-tuning layer's tests (DESIGN §6): each edit breaks one thing the
tests must catch; run from the repo root with .venv built.  Expected: every line KILLED."""
import subprocess

T = "tests/test_adapt.py"
D = "tests/test_adapt_distributed.py"
muts = [
    ("python/structops/finetune/targets.py", 'any(name.endswith(f".{r}") for r in rule)', 'any(name.startswith(r) for r in rule)', T),
    ("python/structops/nn/_merge.py", "    weight.data.copy_(getattr(layer, _STASH))", "    weight.data.copy_(weight.data)", T),
    ("python/structops/finetune/io.py", "b = m.svfit_U * m.delta_sigma()", "b = m.svfit_U * m.svfit_sigma", T),
    ("python/structops/finetune/svd.py", "return int(((s - lo) / (hi - lo) < tau).sum())", "return int(((s - lo) / hi < tau).sum())", T),
    ("python/structops/finetune/io.py", "        aliases[k] = canon[ident]\n            continue", "        continue", T),
    ("python/structops/finetune/layers.py", "u = torch.where(keep, self.sst_U, self.sst_U.detach())", "u = self.sst_U", T),
    ("python/structops/finetune/adapt.py", "            p.requires_grad_(before[n])", "            pass", T),
    ("python/structops/finetune/svd.py", "* (1 - 1e-12)).item()) + 1", "* (1 - 1e-12)).item())", T),
    ("python/structops/finetune/adapt.py", "seed=cfg[\"seed\"] + i)", "seed=cfg[\"seed\"] + i + torch.distributed.get_rank() if torch.distributed.is_initialized() else cfg[\"seed\"] + i)", D),
]
for f, a, b, test in muts:
    if test is None:
        continue
    s = open(f).read()
    assert a in s, (f, a)
    open(f, "w").write(s.replace(a, b, 1))
    try:
        r = subprocess.run([".venv/bin/python", "-m", "pytest", "-q", "-x", test], capture_output=True, text=True)
    finally:
        open(f, "w").write(s)
    print("KILLED" if r.returncode != 0 else "SURVIVED", f, a[:60].replace("\n", " "), r.stdout.strip().splitlines()[-1])
