"""nn.Module layers built on the structops operators."""

from .butterfly import Butterfly, ButterflyBmm, ButterflyUnitary
from .linear import BlockdiagLinear, MonarchLinear

__all__ = ["BlockdiagLinear", "MonarchLinear", "Butterfly", "ButterflyUnitary", "ButterflyBmm"]
