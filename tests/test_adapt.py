"""structops.adapt and the fine-tuning layer: target rules against peft's own functions, every
method against an independent dense formula, save/load round trips, bit-exact merge/unmerge,
SVFit -> peft LoRA export loaded by stock peft, the SVD utilities, and bad inputs leaving the
model unchanged."""

import copy
import json
import math
import os

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import structops
from structops import finetune as ft
from structops.finetune import layers as L
from structops.finetune.targets import matches, select_targets

peft = pytest.importorskip("peft", reason="peft==0.21.2 is a test dependency (scripts/requirements-dev.txt)")
transformers = pytest.importorskip("transformers", reason="transformers is a test dependency")


# ---------------------------------------------------------------------------------------------
# models

class Block(nn.Module):
    def __init__(self, d, h):
        super().__init__()
        self.attn = nn.ModuleDict({"q_proj": nn.Linear(d, d), "k_proj": nn.Linear(d, d, bias=False),
                                   "v_proj": nn.Linear(d, d), "o_proj": nn.Linear(d, d)})
        self.mlp = nn.Sequential(nn.Linear(d, h), nn.GELU(), nn.Linear(h, d))
        self.norm = nn.LayerNorm(d)

    def forward(self, x):
        a = self.attn
        x = x + a["o_proj"](torch.tanh(a["q_proj"](x)) * a["k_proj"](x) + a["v_proj"](x))
        return x + self.mlp(self.norm(x))


class Net(nn.Module):
    """A small transformer-shaped model (two blocks, a head)."""

    def __init__(self, d=24, h=40, n_out=10, blocks=2):
        super().__init__()
        self.inp = nn.Linear(12, d)
        self.blocks = nn.ModuleList([Block(d, h) for _ in range(blocks)])
        self.head = nn.Linear(d, n_out)

    def forward(self, x):
        x = self.inp(x)
        for b in self.blocks:
            x = b(x)
        return self.head(x)


def tiny_hf(kind):
    t = transformers
    if kind == "llama":
        cfg = t.LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                            num_attention_heads=4, num_key_value_heads=2)
        return t.LlamaForCausalLM(cfg)
    if kind == "bert":
        cfg = t.BertConfig(vocab_size=64, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                           num_attention_heads=4)
        return t.BertModel(cfg)
    if kind == "opt":
        cfg = t.OPTConfig(vocab_size=64, hidden_size=32, ffn_dim=48, num_hidden_layers=2, num_attention_heads=4,
                          word_embed_proj_dim=32)
        return t.OPTForCausalLM(cfg)
    raise AssertionError(kind)


ZOO = {
    "mlp": lambda: nn.Sequential(nn.Linear(12, 24), nn.ReLU(), nn.Linear(24, 24), nn.ReLU(), nn.Linear(24, 5)),
    "net": lambda: Net(),
    "llama": lambda: tiny_hf("llama"),
    "bert": lambda: tiny_hf("bert"),
    "opt": lambda: tiny_hf("opt"),
}

RULES = [
    r".*\.q_proj", r".*(q|v)_proj", ["q_proj", "v_proj"], ["query", "value", "dense"], ["fc1", "fc2", "out_proj"],
    ["0", "2"], ["mlp.0", "mlp.2"], r"blocks\.1\..*", ["down_proj"], r"model\.layers\.0\.self_attn\..*",
]


@pytest.mark.parametrize("zoo", list(ZOO))
def test_target_rules_match_peft_check_target_module_exists(zoo):
    from peft import LoraConfig
    from peft.tuners.tuners_utils import check_target_module_exists

    model = ZOO[zoo]()
    names = [n for n, _ in model.named_modules() if n]
    checked = 0
    for rule in RULES:
        for exclude in (None, ["k_proj"], r".*\.1\..*"):
            cfg = LoraConfig(target_modules=rule, exclude_modules=exclude)
            for n in names:
                want = bool(check_target_module_exists(cfg, n))
                assert matches(cfg.target_modules, n, exclude) == want, (rule, exclude, n)
                checked += want
    assert checked > 0  # the zoo exercises positive matches too


@pytest.mark.parametrize("zoo", list(ZOO))
def test_all_linear_selects_what_get_peft_model_selects(zoo):
    from peft import LoraConfig, get_peft_model

    model = ZOO[zoo]()
    ours = select_targets(copy.deepcopy(model), "all-linear")
    pm = get_peft_model(copy.deepcopy(model), LoraConfig(r=2, target_modules="all-linear"))
    theirs = [n[len("base_model.model."):] for n, m in pm.named_modules()
              if isinstance(m, peft.tuners.lora.LoraLayer)]
    assert sorted(ours) == sorted(theirs)
    head = getattr(model, "get_output_embeddings", lambda: None)()
    if head is not None:  # HF causal LMs: the output head is excluded
        assert not any(model.get_submodule(n) is head for n in ours)


# ---------------------------------------------------------------------------------------------
# every method

CONFIGS = {
    "lora": {"r": 4, "alpha": 8},
    "randlora": {"r": 4, "alpha": 16},
    "vera": {"r": 8},
    "sltrain": {"rank": 4, "density": 0.05},
    "monarch": {"nblocks": 4},
    "butterfly": {},
    "svfit": {"energy": 0.9},
    "welore": {"target_reduction": 0.3},
    "sst": {"r": 4},
}
TARGETS = ["q_proj", "v_proj", "mlp.0", "mlp.2"]
EXACT_AT_INIT = {"lora", "randlora", "vera", "sltrain", "monarch", "butterfly", "svfit"}


def _net(dtype=torch.float32):
    torch.manual_seed(1)
    return Net().to(dtype)


def _perturb(model, seed=3):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.add_(0.05 * torch.randn(p.shape, generator=g, dtype=p.dtype))


def _adapted(method, dtype=torch.float32, targets=TARGETS):
    """A perturbed (so not equal to the base) adapted _net and the output on _x()."""
    model = structops.adapt(_net(dtype), method, target_modules=targets, **CONFIGS[method])
    _perturb(model)
    return model, model(_x(dtype)).detach()


def _x(dtype=torch.float32, n=9):
    return torch.randn(n, 12, generator=torch.Generator().manual_seed(7), dtype=dtype)


def expected_weight(m):
    """Each method's adapted weight, written independently from the layer's own helpers."""
    W0 = m.base_layer.weight.detach().double()
    if isinstance(m, L.LoRALinear):
        return W0 + m.alpha / m.r * m.lora_B.double() @ m.lora_A.double()
    if isinstance(m, L.SLTrainAdapter):
        S = torch.zeros_like(W0).reshape(-1)
        S[m.sparse_index.long()] = m.sparse_value.double()
        return W0 + m.alpha / m.rank * m.lora_B.double() @ m.lora_A.double() + S.reshape(W0.shape)
    if isinstance(m, L.MonarchAdapter):
        eye = torch.eye(m.in_features, dtype=torch.float64)
        def dense(mon):
            return mon.double()(eye).T
        M = copy.deepcopy(m.monarch)
        Mi = copy.deepcopy(m.monarch_init) if m.residual else None
        return W0 + dense(M) - dense(Mi) if m.residual else dense(M)
    if isinstance(m, L.ButterflyAdapter):
        T = copy.deepcopy(m.butterfly).double()(torch.eye(m.in_features, dtype=torch.float64))  # rows: e_j T^T
        return W0 @ T.T
    if isinstance(m, L.SVFitLinear):
        d = (m.svfit_sigma - m.svfit_sigma0).double()
        return W0 + m.svfit_U.double() @ torch.diag(d) @ m.svfit_Vh.double()
    if isinstance(m, L.WeLoreLinear):
        return m.welore_B.double() @ m.welore_A.double()
    if isinstance(m, L.SSTLinear):
        return m.sst_U.double() @ torch.diag(m.sst_sigma.double()) @ m.sst_Vh.double()
    if isinstance(m, structops.nn.RandLoRALinear):
        return W0 + structops.randbasis.merge.randlora_delta_weight(*m._bases(), m.randlora_lambda, m.randlora_gamma,
                                                                    m.scaling, m.in_features, m.out_features).double()
    if isinstance(m, structops.nn.VeRALinear):
        a, b = m._bases()
        return W0 + torch.diag(m.vera_lambda_b.double()) @ b.double() @ torch.diag(m.vera_lambda_d.double()) @ a.double()
    raise AssertionError(type(m))


def _reference_forward(model, x):
    """The adapted model with every adapted linear replaced by F.linear(expected weight)."""
    ref = copy.deepcopy(model).double()
    for n, m in ft.adapter_layers(ref).items():
        lin = nn.Linear(m.in_features, m.out_features, bias=m.base_layer.bias is not None).double()
        with torch.no_grad():
            lin.weight.copy_(expected_weight(m))
            if m.base_layer.bias is not None:
                lin.bias.copy_(m.base_layer.bias)
        parent, _, leaf = n.rpartition(".")
        setattr(ref.get_submodule(parent) if parent else ref, leaf, lin)
    return ref(x.double())


@pytest.mark.parametrize("method", list(CONFIGS))
def test_method_forward_grads_and_frozen_base(method):
    base = _net()
    x = _x()
    y0 = base(x).detach()
    model = structops.adapt(copy.deepcopy(base), method, target_modules=TARGETS, **CONFIGS[method])
    names = structops.adapted_modules(model)
    assert names and set(names) <= {n for n, _ in base.named_modules() if n.endswith(tuple(TARGETS))}
    if method in EXACT_AT_INIT:
        torch.testing.assert_close(model(x), y0, rtol=0, atol=1e-5)
    summary = ft.trainable_parameters(model)
    assert 0 < summary.trainable < summary.total
    for n, p in model.named_parameters():  # only adapter parameters train
        assert p.requires_grad == (any(n.startswith(a + ".") for a in names) and ".base_layer." not in n
                                   and "monarch_init" not in n), n
    _perturb(model)
    y = model(x)
    torch.testing.assert_close(y.double(), _reference_forward(model, x), rtol=1e-4, atol=1e-5)
    y.square().mean().backward()
    for n, p in model.named_parameters():
        if p.requires_grad:
            assert p.grad is not None and torch.isfinite(p.grad).all(), n
        else:
            assert p.grad is None, n


@pytest.mark.parametrize("method", list(CONFIGS))
def test_merge_unmerge_bit_exact_and_merge_and_unload(method):
    model, y = _adapted(method)
    x = _x()
    w0 = {n: m.base_layer.weight.detach().clone() for n, m in ft.adapter_layers(model).items()}
    ft.merge(model)
    torch.testing.assert_close(model(x), y, rtol=1e-4, atol=1e-5)
    with pytest.raises(RuntimeError, match="already merged"):
        ft.merge(model)
    ft.unmerge(model)
    for n, m in ft.adapter_layers(model).items():
        assert torch.equal(m.base_layer.weight, w0[n]), n  # bit for bit
    torch.testing.assert_close(model(x), y, rtol=0, atol=0)
    plain = ft.merge_and_unload(copy.deepcopy(model))
    assert not any(isinstance(m, (ft.layers.FinetuneAdapter, structops.nn.RandLoRALinear, structops.nn.VeRALinear))
                   for m in plain.modules())
    torch.testing.assert_close(plain(x), y, rtol=1e-4, atol=1e-5)
    restored = ft.unload(model)
    for n, w in w0.items():
        assert type(restored.get_submodule(n)) is nn.Linear and torch.equal(restored.get_submodule(n).weight, w)
    assert all(p.requires_grad for p in restored.parameters())


def test_subtracting_the_delta_would_not_be_bit_exact():
    """Why merge keeps a copy: W0 + dW - dW != W0 for the perturbed LoRA above (so the bit-exact
    test above fails for a subtracting unmerge)."""
    model = structops.adapt(_net(), "lora", target_modules=TARGETS, **CONFIGS["lora"])
    _perturb(model)
    m = ft.adapter_layers(model)["blocks.0.attn.q_proj"]
    w0 = m.base_layer.weight.detach().clone()
    d = m.delta_weight().detach()
    assert not torch.equal((w0 + d) - d, w0)


@pytest.mark.parametrize("method", list(CONFIGS))
def test_save_load_round_trip(method, tmp_path):
    model, y = _adapted(method)
    x = _x()
    info = structops.save_adapter(model, str(tmp_path))
    cfg = json.loads((tmp_path / "adapter_config.json").read_text())
    assert cfg["method"] == method and cfg["target_modules"] == structops.adapted_modules(model)
    fresh = _net()
    structops.load_adapter(fresh, str(tmp_path))
    assert structops.adapted_modules(fresh) == structops.adapted_modules(model)
    assert torch.equal(fresh(x), y)
    # into an already adapted model (same method, other values)
    other = structops.adapt(_net(), method, target_modules=TARGETS, **CONFIGS[method])
    structops.load_adapter(other, str(tmp_path))
    assert torch.equal(other(x), y)
    assert info["bytes"] > 0


@pytest.mark.parametrize("method", ["randlora", "vera"])
def test_shared_bases_stored_once_or_regenerated(method, tmp_path):
    model, y = _adapted(method)
    x = _x()
    structops.save_adapter(model, str(tmp_path / "full"))
    cfg = json.loads((tmp_path / "full" / "adapter_config.json").read_text())
    from safetensors import safe_open
    with safe_open(str(tmp_path / "full" / "adapter_model.safetensors"), "pt") as f:
        keys = list(f.keys())
    basis = [k for k in keys if k.endswith(("_A", "_B")) and (k.rsplit(".", 1)[-1].startswith(method))]
    assert len(basis) == 2 and len(cfg["aliases"]) == 2 * (len(cfg["target_modules"]) - 1)
    structops.save_adapter(model, str(tmp_path / "seed"), save_bases=False)
    assert os.path.getsize(tmp_path / "seed" / "adapter_model.safetensors") < \
        os.path.getsize(tmp_path / "full" / "adapter_model.safetensors")
    fresh = structops.load_adapter(_net(), str(tmp_path / "seed"))
    assert torch.equal(fresh(x), y)


def test_randlora_and_vera_bases_are_get_peft_models(tmp_path):
    from peft import RandLoraConfig, VeraConfig, get_peft_model

    for method, cfg, pcfg in (
            ("randlora", {"r": 4, "seed": 5, "alpha": 16},
             RandLoraConfig(r=4, randlora_alpha=16, target_modules=TARGETS, projection_prng_key=5)),
            ("vera", {"r": 8, "seed": 5}, VeraConfig(r=8, target_modules=TARGETS, projection_prng_key=5))):
        ours = structops.adapt(_net(), method, target_modules=TARGETS, **cfg)
        theirs = get_peft_model(_net(), pcfg)
        layer = ft.adapter_layers(ours)["blocks.0.mlp.0"]
        for name in ((f"{method}_A", f"{method}_B")):
            want = getattr(theirs.base_model, name)["default"]
            assert torch.equal(getattr(layer, name).float(), want.float()), name
        _perturb(ours)
        with torch.no_grad():  # copy our trained vectors into peft and compare outputs
            for n, m in ft.adapter_layers(ours).items():
                pm = theirs.base_model.model.get_submodule(n)
                for pn in (("randlora_lambda", "randlora_gamma") if method == "randlora" else ("vera_lambda_b", "vera_lambda_d")):
                    getattr(pm, pn)["default"].copy_(getattr(m, pn))
        x = _x()
        torch.testing.assert_close(ours(x), theirs(x), rtol=1e-5, atol=1e-6)


def test_svfit_exports_a_lora_stock_peft_loads(tmp_path):
    from peft import PeftModel

    model = structops.adapt(_net(), "svfit", target_modules="all-linear", exclude_modules=["head"], energy=0.95)
    _perturb(model)
    x = _x()
    y = model(x).detach()
    structops.export_lora(model, str(tmp_path))
    loaded = PeftModel.from_pretrained(_net(), str(tmp_path))
    yl = loaded(x).detach()
    assert float((yl - y).norm() / y.norm()) <= 1e-6
    ranks = model.structops_adapter.config["ranks"]
    for n, r in ranks.items():
        assert loaded.base_model.model.get_submodule(n).lora_A["default"].weight.shape[0] == r
    # LoRA exports too, and the other methods refuse (not exactly low rank)
    lora = structops.adapt(_net(), "lora", target_modules=TARGETS, r=4, alpha=16)
    _perturb(lora)
    structops.export_lora(lora, str(tmp_path / "lora"))
    pl = PeftModel.from_pretrained(_net(), str(tmp_path / "lora"))
    torch.testing.assert_close(pl(x), lora(x), rtol=1e-6, atol=1e-6)
    with pytest.raises(ValueError, match="not exactly low rank"):
        structops.export_lora(structops.adapt(_net(), "vera", target_modules=TARGETS, r=8), str(tmp_path / "v"))


# ---------------------------------------------------------------------------------------------
# SVD family

def test_energy_rank_and_svfit_ranks():
    S = torch.tensor([3.0, 2.0, 1.0, 0.5])
    e = (S ** 2).cumsum(0) / (S ** 2).sum()   # 0.643, 0.929, 1.0 - ...
    assert ft.energy_rank(S, float(e[0])) == 1
    assert ft.energy_rank(S, 0.9) == 2
    assert ft.energy_rank(S, 0.98) == 3
    assert ft.energy_rank(S, 0.99) == 4
    assert ft.energy_rank(S, 1.0) == 4
    model = structops.adapt(_net(), "svfit", target_modules=TARGETS, energy=0.8)
    for n, m in ft.adapter_layers(model).items():
        s = torch.linalg.svdvals(m.base_layer.weight.double())
        r = m.r
        frac = lambda k: float((s[:k] ** 2).sum() / (s ** 2).sum())  # noqa: E731
        assert frac(r) >= 0.8 > frac(r - 1), n


def test_welore_allocation_rule_table_and_search():
    spectra = {"a": torch.tensor([10.0, 5.0, 1.0, 0.5, 0.0]), "b": torch.tensor([4.0, 2.2, 2.0, 1.0])}
    # min-max: a -> [1, .5, .1, .05, 0]; b -> [1, .4, .333, 0] (b's min is not 0: (s - min) / max
    # would give [.75, .3, .25, 0] and prune 3)
    ranks, red, tau = ft.welore_ranks(spectra, tau=0.35)
    assert ranks == {"a": 2, "b": 2} and red == pytest.approx(5 / 9) and tau == 0.35
    ranks, red, _ = ft.welore_ranks(spectra, tau=0.35, min_ratio=0.5)  # b prunes 2/4, not > 0.5: N-LRC
    assert ranks == {"a": 2, "b": None} and red == pytest.approx(3 / 9)
    _, red, tau = ft.welore_ranks(spectra, target_reduction=0.5)
    assert red >= 0.5 and ft.welore_ranks(spectra, tau=tau * 0.999)[1] < 0.5
    assert ft.welore_ranks(spectra, target_reduction=0.3, tau="table")[2] == ft.svd.WELORE_TAU[30]
    with pytest.raises(ValueError, match="table"):
        ft.welore_ranks(spectra, target_reduction=0.33, tau="table")
    with pytest.raises(ValueError, match="not reachable"):
        ft.welore_ranks(spectra, target_reduction=0.95)


def test_welore_leaves_nlrc_dense_and_frozen():
    model = structops.adapt(_net(), "welore", target_modules=TARGETS, target_reduction=0.3, min_ratio=0.2)
    st = model.structops_adapter
    nlrc = [n for n, k in st.config["ranks"].items() if k is None]
    assert set(st.adapted) | set(nlrc) == set(select_targets(_net(), TARGETS))
    for n in nlrc:
        m = model.get_submodule(n)
        assert type(m) is nn.Linear and not m.weight.requires_grad
    assert st.info["rank_reduction"] >= 0.3


def test_spectrum_store_decomposes_once_and_persists(tmp_path):
    store = ft.SpectrumStore()
    structops.adapt(_net(), "svfit", target_modules=TARGETS, spectrum_store=store)
    n = store.computed
    assert n == len(select_targets(_net(), TARGETS))
    structops.adapt(_net(), "welore", target_modules=TARGETS, spectrum_store=store)
    assert store.computed == n  # same weights: nothing decomposed again
    store.save(str(tmp_path / "s.pt"))
    again = ft.SpectrumStore.load(str(tmp_path / "s.pt"))
    structops.adapt(_net(), "svfit", target_modules=TARGETS, spectrum_store=again)
    assert again.computed == 0 and len(again) == n
    changed = _net()
    with torch.no_grad():
        changed.blocks[0].attn["q_proj"].weight[0, 0] += 1
    structops.adapt(changed, "svfit", target_modules=TARGETS, spectrum_store=again)
    assert again.computed == 1


def test_training_never_writes_into_the_spectrum_store():
    store = ft.SpectrumStore()
    for method, cfg in (("sst", {"r": 2}), ("svfit", {"energy": 1.0})):
        model = structops.adapt(_net(), method, target_modules=["mlp.0"], spectrum_store=store, **cfg)
        cached = [t.clone() for e in store._entries.values() for t in e]
        _perturb(model)
        ft.adapter_layers(model)["blocks.0.mlp.0"].load_state_dict(
            {k: torch.zeros_like(v) for k, v in ft.adapter_layers(model)["blocks.0.mlp.0"].state_dict().items()
             if not k.startswith("base_layer")}, strict=False)
        after = [t for e in store._entries.values() for t in e]
        assert all(torch.equal(a, b) for a, b in zip(cached, after)), method


def test_batched_svd_matches_per_matrix():
    ws = {f"w{i}": torch.randn(6, 4, dtype=torch.float64) for i in range(3)} | {"v": torch.randn(3, 5, dtype=torch.float64)}
    out = ft.batched_svd(ws, chunk=2)
    for n, w in ws.items():
        u, s, vh = out[n]
        torch.testing.assert_close(u @ torch.diag(s) @ vh, w)
        torch.testing.assert_close(s, torch.linalg.svdvals(w))


def test_sst_masks_unsampled_pairs_and_resvd_keeps_w():
    model = structops.adapt(_net(), "sst", target_modules=TARGETS, r=3, seed=1)
    m = ft.adapter_layers(model)["blocks.0.mlp.0"]
    sel = m.sst_mask.bool()
    assert int(sel.sum()) == 3
    model(_x()).square().mean().backward()
    assert (m.sst_U.grad[:, ~sel] == 0).all() and (m.sst_U.grad[:, sel] != 0).any()
    assert (m.sst_Vh.grad[~sel] == 0).all() and (m.sst_sigma.grad != 0).all()
    _perturb(model)
    w = m.adapted_weight().clone()
    ft.sst_round(model, torch.Generator().manual_seed(2))
    torch.testing.assert_close(m.adapted_weight(), w, rtol=1e-5, atol=1e-5)
    eye = torch.eye(m.sst_U.shape[1])
    torch.testing.assert_close(m.sst_U.T @ m.sst_U, eye, rtol=1e-5, atol=1e-5)


def test_sst_sampling_is_proportional_to_sigma():
    base = nn.Linear(16, 16)
    s = torch.tensor([8.0, 4.0, 2.0, 1.0] + [1e-6] * 12)
    u, _, vh = torch.linalg.svd(torch.randn(16, 16))
    layer = L.SSTLinear(base, u, s, vh, r=1, generator=torch.Generator().manual_seed(0))
    g = torch.Generator().manual_seed(1)
    counts = torch.zeros(16)
    for _ in range(3000):
        counts[layer.resample(g)] += 1
    p = counts[:4] / counts.sum()
    torch.testing.assert_close(p, s[:4] / s.sum(), rtol=0, atol=0.03)


# ---------------------------------------------------------------------------------------------
# bad inputs leave the model unchanged

def _snapshot(model):
    return ({k: v.clone() for k, v in model.state_dict().items()}, {n: p.requires_grad for n, p in model.named_parameters()},
            [type(m) for m in model.modules()], getattr(model, "structops_adapter", None))


def _assert_unchanged(model, snap):
    sd, flags, types, st = snap
    now = model.state_dict()
    assert sd.keys() == now.keys() and all(torch.equal(sd[k], now[k]) for k in sd)
    assert flags == {n: p.requires_grad for n, p in model.named_parameters()}
    assert types == [type(m) for m in model.modules()]
    assert getattr(model, "structops_adapter", None) is st


@pytest.mark.parametrize("call, match", [
    (lambda m: structops.adapt(m, "loraa", target_modules=TARGETS), "unknown method 'loraa'"),
    (lambda m: structops.adapt(m, "lora", target_modules=["nope"]), "matched no module"),
    (lambda m: structops.adapt(m, "lora", target_modules=TARGETS, r=24), r"r=24 must be < min"),
    (lambda m: structops.adapt(m, "lora", target_modules=TARGETS, rank=4), r"unknown config \['rank'\]"),
    (lambda m: structops.adapt(m, "sltrain", target_modules=TARGETS, rank=40), "rank=40 must be < min"),
    (lambda m: structops.adapt(m, "vera", target_modules=TARGETS, r=64), "r=64 must be < min"),
    (lambda m: structops.adapt(m, "lora", target_modules=r"blocks\.0\.attn"), "is a ModuleDict"),
    (lambda m: structops.adapt(m, "lora", target_modules=None), "target_modules is required"),
    (lambda m: structops.adapt(m, "lora", target_modules=TARGETS, dropout=1.5), "dropout must be in"),
    (lambda m: structops.adapt(m, "welore", target_modules=TARGETS, target_reduction=2.0), "target_reduction"),
    (lambda m: structops.adapt(m, "svfit", target_modules=TARGETS, energy=0.0), "energy must be in"),
    (lambda m: structops.adapt(m, "sst", target_modules=TARGETS, r=0), "positive int"),
])
def test_bad_adapt_calls_raise_and_leave_the_model_unchanged(call, match):
    model = _net()
    snap = _snapshot(model)
    with pytest.raises(ValueError, match=match):
        call(model)
    _assert_unchanged(model, snap)


def test_bad_adapter_files_raise_and_leave_the_model_unchanged(tmp_path):
    lora = structops.adapt(_net(), "lora", target_modules=TARGETS, r=4)
    structops.save_adapter(lora, str(tmp_path / "lora"))
    # another method into an adapted model
    vera = structops.adapt(_net(), "vera", target_modules=TARGETS, r=8)
    snap = _snapshot(vera)
    with pytest.raises(ValueError, match="holds a 'lora' adapter but the model is adapted with 'vera'"):
        structops.load_adapter(vera, str(tmp_path / "lora"))
    _assert_unchanged(vera, snap)
    # another shape
    wide = Net(d=32)
    snap = _snapshot(wide)
    with pytest.raises(ValueError, match=r"is \(out, in\) = \(32, 32\) in the model but \[?\(?24, 24"):
        structops.load_adapter(wide, str(tmp_path / "lora"))
    _assert_unchanged(wide, snap)
    # a tensor of the wrong shape inside the file (same module shapes): rebuilt model is unloaded again
    from safetensors.torch import load_file, save_file
    sd = load_file(str(tmp_path / "lora" / "adapter_model.safetensors"))
    k = next(k for k in sd if k.endswith("lora_A"))
    sd[k] = torch.zeros(3, 24)
    os.makedirs(tmp_path / "bad", exist_ok=True)
    save_file(sd, str(tmp_path / "bad" / "adapter_model.safetensors"))
    (tmp_path / "bad" / "adapter_config.json").write_text((tmp_path / "lora" / "adapter_config.json").read_text())
    plain = _net()
    snap = _snapshot(plain)
    with pytest.raises(ValueError, match="in the file"):
        structops.load_adapter(plain, str(tmp_path / "bad"))
    _assert_unchanged(plain, snap)
    # a peft directory is named as such
    structops.export_lora(lora, str(tmp_path / "peft"))
    with pytest.raises(ValueError, match="peft LORA adapter"):
        structops.load_adapter(_net(), str(tmp_path / "peft"))
    with pytest.raises(ValueError, match="already carries"):
        structops.adapt(lora, "lora", target_modules=TARGETS)
    with pytest.raises(ValueError, match="was not adapted"):
        structops.adapted_modules(_net())


def test_failed_merge_changes_nothing():
    model = structops.adapt(_net(), "lora", target_modules=TARGETS, r=4)
    with torch.no_grad():
        ft.adapter_layers(model)["blocks.1.mlp.2"].lora_B.fill_(float("inf"))
        ft.adapter_layers(model)["blocks.1.mlp.2"].lora_A.fill_(1.0)
    snap = _snapshot(model)
    with pytest.raises(RuntimeError, match="not finite; nothing was merged"):
        ft.merge(model)
    _assert_unchanged(model, snap)
    assert not any(m.merged for m in ft.adapter_layers(model).values())


def test_float64_gradcheck_through_adapters():
    for method in ("lora", "svfit", "sst", "sltrain"):
        model = structops.adapt(_net(torch.float64), method, target_modules=["mlp.0"], **CONFIGS[method])
        _perturb(model)
        m = ft.adapter_layers(model)["blocks.0.mlp.0"]
        # SST masks the U / Vh gradients of unsampled pairs by design: check x and sigma there
        names = [n for n, q in m.named_parameters() if q.requires_grad and (method != "sst" or n == "sst_sigma")]
        x = torch.randn(3, 24, dtype=torch.float64, requires_grad=True)

        def f(x, *ps):
            with torch.nn.utils.stateless._reparametrize_module(m, dict(zip(names, ps))):
                return m(x)

        ps = [m.get_parameter(n).detach().clone().requires_grad_() for n in names]
        assert torch.autograd.gradcheck(f, (x, *ps), atol=1e-6), method


@pytest.mark.parametrize("method", list(CONFIGS))
def test_adapted_model_compiles_fullgraph(method):
    """Every adapter's forward and backward trace as one graph (the custom ops' fake kernels and
    autograd formulas) and give eager's outputs and gradients."""
    torch._dynamo.reset()
    model = structops.adapt(_net(), method, target_modules=TARGETS, **CONFIGS[method])
    _perturb(model)
    twin = copy.deepcopy(model)
    x = _x()
    compiled = torch.compile(twin, backend="aot_eager", fullgraph=True)
    y, yc = model(x), compiled(x)
    torch.testing.assert_close(yc, y, rtol=1e-5, atol=1e-6)
    y.square().mean().backward()
    yc.square().mean().backward()
    for (n, p), (_, q) in zip(model.named_parameters(), twin.named_parameters()):
        if p.requires_grad:
            torch.testing.assert_close(q.grad, p.grad, rtol=1e-4, atol=1e-6, msg=lambda s: f"{n}: {s}")


@pytest.mark.parametrize("method", ["svfit", "sst"])
def test_svd_layer_plans_agree_and_auto_follows_the_cost_model(method):
    outs = {}
    for strategy in ("factored", "merged"):
        cfg = dict(CONFIGS[method], strategy=strategy)
        model = structops.adapt(_net(torch.float64), method, target_modules=TARGETS, **cfg)
        _perturb(model)
        y = model(_x(torch.float64))
        y.square().sum().backward()
        outs[strategy] = (y.detach(), {n: p.grad for n, p in model.named_parameters() if p.requires_grad})
    torch.testing.assert_close(outs["factored"][0], outs["merged"][0])
    for n, g in outs["factored"][1].items():
        torch.testing.assert_close(g, outs["merged"][1][n], msg=lambda s: f"{n}: {s}")
    x = torch.empty(2048, 1024)
    assert not L._auto_merged("auto", x, 1024, 1024, 23, need_grad=True)     # SVFit's usual small r: factored
    assert L._auto_merged("auto", x, 1024, 1024, 1024, need_grad=True)       # SST's full spectrum: merged
    assert L._auto_merged("auto", x, 1024, 1024, 23, need_grad=False)        # inference, many tokens: merged
    assert not L._auto_merged("auto", torch.empty(8, 1024), 1024, 1024, 23, need_grad=False)


@pytest.mark.parametrize("method", list(CONFIGS))
def test_bf16_base_keeps_float32_trainables_and_loads_a_float32_adapter(method, tmp_path):
    model, y = _adapted(method)
    x = _x()
    structops.save_adapter(model, str(tmp_path))
    half = structops.load_adapter(_net().to(torch.bfloat16), str(tmp_path))
    yh = half(x.to(torch.bfloat16))
    assert yh.dtype == torch.bfloat16
    want = torch.bfloat16 if method in ("monarch", "butterfly") else torch.float32
    assert {p.dtype for p in half.parameters() if p.requires_grad} == {want}
    assert float((yh.float() - y).norm() / y.norm()) < 3e-2
    yh.float().square().mean().backward()
    assert all(p.grad is not None and p.grad.dtype == p.dtype for p in half.parameters() if p.requires_grad)


@pytest.mark.parametrize("method, cfg", [("lora", {"r": 4}), ("randlora", {"r": 8, "alpha": 16}),
                                         ("svfit", {"energy": 0.9}), ("welore", {"target_reduction": 0.3})])
def test_hugging_face_causal_lm_all_linear_round_trip(method, cfg, tmp_path):
    """A tiny Llama: all-linear leaves lm_head alone; train a step, save, reload into a fresh
    model with the same weights, same logits."""
    torch.manual_seed(0)
    base = tiny_hf("llama")
    sd = copy.deepcopy(base.state_dict())
    ids = torch.randint(0, 64, (2, 7))
    model = structops.adapt(base, method, target_modules="all-linear", **cfg)
    assert "lm_head" not in structops.adapted_modules(model)
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1)
    model(input_ids=ids, labels=ids).loss.backward()
    opt.step()
    logits = model(input_ids=ids).logits.detach()
    structops.save_adapter(model, str(tmp_path))
    fresh = tiny_hf("llama")
    fresh.load_state_dict(sd)
    structops.load_adapter(fresh, str(tmp_path))
    assert torch.equal(fresh(input_ids=ids).logits, logits)
