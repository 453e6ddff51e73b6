"""nn.Module layers built on the structops operators."""

from .linear import BlockdiagLinear, MonarchLinear

__all__ = ["BlockdiagLinear", "MonarchLinear"]
