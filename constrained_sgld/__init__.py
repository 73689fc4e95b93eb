"""constrained-sgld: stochastic-gradient Langevin dynamics with weights kept on constraint sets."""

from .constraints import (
    Ball,
    Box,
    Circle,
    Constraint,
    NonNegative,
    Orthogonal,
    Sphere,
    available_constraints,
    make_constraint,
    register_constraint,
)
from . import distributed, init
from .optim import ConstrainedSGLD, ConstrainedSGNHT, ConstrainedUnderdampedSGLD
from .chains import ChainTrace, chain_diagnostics
from .ensemble import DeepEnsemble, member_batches
from .samples import CyclicalLR, OptimiseThenSample, SampleCollector
from .tags import constrain, unconstrain

__version__ = "0.1.0"

__all__ = [
    "ConstrainedSGLD",
    "ConstrainedUnderdampedSGLD",
    "ConstrainedSGNHT",
    "SampleCollector",
    "ChainTrace",
    "chain_diagnostics",
    "CyclicalLR",
    "OptimiseThenSample",
    "DeepEnsemble",
    "member_batches",
    "constrain",
    "unconstrain",
    "distributed",
    "init",
    "Constraint",
    "register_constraint",
    "available_constraints",
    "make_constraint",
    "Orthogonal",
    "Sphere",
    "Ball",
    "Circle",
    "NonNegative",
    "Box",
]
