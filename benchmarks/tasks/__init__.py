"""The benchmark tasks by name."""

from typing import Dict, Type

from .base import ClassificationTask, Task
from .fmnist import FashionICNN, FashionMLP, FashionResNet
from .spirals import TwoSpirals
from .text import RottenTomatoes, ShakespeareCharLM

TASKS: Dict[str, Type[Task]] = {t.name: t for t in (FashionMLP, FashionResNet, RottenTomatoes, ShakespeareCharLM, TwoSpirals, FashionICNN)}

__all__ = ["TASKS", "Task", "ClassificationTask"]
