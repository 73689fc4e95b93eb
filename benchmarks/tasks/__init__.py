"""The benchmark tasks by name."""

from typing import Dict, Type

from .base import ClassificationTask, Task
from .binary import BinaryFashion
from .deep import DeepMLP
from .gpt import ShakespeareGPT
from .fmnist import FashionCNN, FashionICNN, FashionMLP, FashionResNet
from .recurrent import CopyMemory, PixelFashion
from .spirals import TwoSpirals
from .text import RottenTomatoes, ShakespeareCharLM, ShakespeareRNN
from .vit import FashionViT

TASKS: Dict[str, Type[Task]] = {
    t.name: t
    for t in (FashionMLP, FashionResNet, RottenTomatoes, ShakespeareCharLM, TwoSpirals, FashionICNN, CopyMemory, PixelFashion, DeepMLP, ShakespeareRNN, BinaryFashion, ShakespeareGPT, FashionCNN, FashionViT)
}

__all__ = ["TASKS", "Task", "ClassificationTask"]
