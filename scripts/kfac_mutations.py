"""Mutation check of the K-FAC family tests (DESIGN §6): each edit breaks one thing the tests must
catch; run from the repo root with .venv built.  Expected: every line KILLED."""
import subprocess, sys
muts=[("python/structops/kfac/__init__.py","weight = (M * B if mean else 1.0)","weight = (M if mean else 1.0)"),
      ("python/structops/kfac/__init__.py","return a.mean(dim=tuple(range(1, a.dim() - 1))), 1.0","return a.sum(dim=tuple(range(1, a.dim() - 1))), 1.0"),
      ("python/structops/kfac/__init__.py","col[:, c] += sp[:, c]","col[:, c] += p[:, c]"),
      ("python/structops/unlearn/methods.py","            if kl <= k * kl_budget:","            if True:"),
      ("python/structops/ops/kfac.py","    pi = torch.sqrt(torch.where(ok, ta, torch.ones_like(ta)) / torch.where(ok, ts, torch.ones_like(ts)))","    pi = torch.where(ok, ta, torch.ones_like(ta)) / torch.where(ok, ts, torch.ones_like(ts))"),
      ("python/structops/kfac/__init__.py","                contrib = g_rot[:, 0].square().T @ a_rot[:, 0].square()","                contrib = (g_rot[:, 0].T @ a_rot[:, 0]).square()")]
for f,a,b in muts:
    s=open(f).read(); assert a in s,(f,a)
    open(f,'w').write(s.replace(a,b,1))
    r=subprocess.run([".venv/bin/python","-m","pytest","-q","-x","tests/test_kfac.py"],capture_output=True,text=True)
    open(f,'w').write(s)
    print("KILLED" if r.returncode!=0 else "SURVIVED", f, a[:60], r.stdout.strip().splitlines()[-1])
