"""The fine-tuning layer: adapt any model with a structops method, peft-style.

    import structops
    model = structops.adapt(model, "svfit", target_modules="all-linear")   # or "lora", "randlora", ...
    print(structops.finetune.trainable_parameters(model))
    ... train ...
    structops.save_adapter(model, "out/")           # safetensors + adapter_config.json
    structops.export_lora(model, "peft_lora/")      # lora / svfit: a directory stock peft loads
    merged = structops.finetune.merge_and_unload(model)

* ``adapt.py``: ``adapt``, ``METHODS`` (defaults), ``adapted_modules``, ``trainable_parameters``,
  ``merge`` / ``unmerge`` / ``merge_and_unload`` / ``unload``, ``sst_round``.
* ``targets.py``: peft 0.21.2's target-module rules.
* ``layers.py``: the adapter layers (LoRA, SLTrain fine-tuning, Monarch, butterfly, SVFit,
  WeLore, SST); RandLoRA / VeRA are ``structops.nn.RandLoRALinear`` / ``VeRALinear``.
* ``svd.py``: batched SVD, the spectrum store, SVFit's energy rank and WeLore's allocation.
* ``io.py``: ``save_adapter`` / ``load_adapter`` / ``export_lora``.
* ``bench.py``: the end-to-end example (``python -m structops.finetune.bench``).
"""

from .adapt import (METHODS, AdapterState, adapt, adapted_modules, adapter_layers, merge, merge_and_unload,
                    sst_round, trainable_parameters, unload, unmerge)
from .io import export_lora, load_adapter, save_adapter
from .svd import SpectrumStore, batched_svd, default_store, energy_rank, welore_ranks

__all__ = ["adapt", "METHODS", "AdapterState", "adapted_modules", "adapter_layers", "trainable_parameters", "merge",
           "unmerge", "merge_and_unload", "unload", "sst_round", "save_adapter", "load_adapter", "export_lora",
           "SpectrumStore", "batched_svd", "default_store", "energy_rank", "welore_ranks"]
