"""The end-to-end fine-tuning example runs (quick mode, three contenders) and writes its JSON
and PNG; adapting really changes the rotated-digits accuracy."""

import json

import pytest

pytest.importorskip("sklearn", reason="scikit-learn is a test dependency (the example's data)")
pytest.importorskip("matplotlib", reason="matplotlib is a test dependency (the example's plot)")

pytestmark = pytest.mark.example


def test_finetune_bench_quick(tmp_path):
    from structops.finetune import bench

    out = bench.main(["--quick", "--methods", "full,lora,svfit,peft-lora", "--json", str(tmp_path / "r.json"),
                      "--png", str(tmp_path / "r.png")])
    saved = json.loads((tmp_path / "r.json").read_text())
    assert [r["method"] for r in saved["rows"]] == ["full", "lora", "svfit", "peft-lora"]
    assert (tmp_path / "r.png").stat().st_size > 10_000
    by = {r["method"]: r for r in out["rows"]}
    base = saved["meta"]["base_rotated_accuracy"]
    assert by["full"]["accuracy"] > base + 0.3 and by["lora"]["accuracy"] > base + 0.2  # 40 steps only
    assert by["svfit"]["trainable"] < by["lora"]["trainable"] < by["full"]["trainable"]
    assert by["lora"]["time_vs_peft"] is not None and by["lora"]["train_memory_bytes"] > 0
    assert {r["method"] for r in saved["layer"]} == {"frozen dense", "lora", "svfit", "peft-lora"}
