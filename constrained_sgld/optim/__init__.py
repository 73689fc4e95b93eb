"""The three constrained Langevin optimisers and their pure update functions."""

from .base import ConstrainedLangevinOptimizer
from .overdamped import ConstrainedSGLD, overdamped_update
from .thermostat import ConstrainedSGNHT, thermostat_update
from .underdamped import ConstrainedUnderdampedSGLD, langevin_step_size, underdamped_update

__all__ = [
    "ConstrainedLangevinOptimizer",
    "ConstrainedSGLD",
    "ConstrainedUnderdampedSGLD",
    "ConstrainedSGNHT",
    "thermostat_update",
    "overdamped_update",
    "underdamped_update",
    "langevin_step_size",
]
