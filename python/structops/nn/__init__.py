"""nn.Module layers built on the structops operators."""

from .butterfly import Butterfly, ButterflyBmm, ButterflyUnitary
from .linear import BlockdiagLinear, MonarchLinear
from .randbasis import RandLoRALinear, VeRALinear
from .sltrain import SLTrainLinear

__all__ = ["BlockdiagLinear", "MonarchLinear", "Butterfly", "ButterflyUnitary", "ButterflyBmm", "RandLoRALinear", "VeRALinear", "SLTrainLinear"]
