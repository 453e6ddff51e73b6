"""Random-basis family (RandLoRA, VeRA): peft-exact basis generation and basis sharing.

The ops are ``structops.randlora_linear`` / ``structops.vera_linear``; the layers
``structops.nn.RandLoRALinear`` / ``structops.nn.VeRALinear``; peft interop in
``structops.compat.peft``.
"""

from .bases import (peft_generation_dtype, randlora_bases, shared_randlora_bases, shared_vera_bases,
                    vera_bases)
from .merge import (dequantized_weight, is_quantized, merge_delta, randlora_delta_weight, set_weight,
                    vera_delta_weight)

__all__ = ["peft_generation_dtype", "randlora_bases", "vera_bases", "shared_randlora_bases", "shared_vera_bases",
           "randlora_delta_weight", "vera_delta_weight", "is_quantized", "dequantized_weight", "set_weight",
           "merge_delta"]
