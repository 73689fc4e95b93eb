"""Constraint sets. Importing this package registers the built-in sets by name."""

from .base import (
    AmbientTangent,
    Constraint,
    ConstraintSpec,
    Packing,
    StepContext,
    Unconstrained,
    available_constraints,
    get_constraint_class,
    make_constraint,
    register_constraint,
)
from .circle import Circle
from .elementwise import Box, NonNegative
from .norms import Ball, Sphere
from .orthogonal import Orthogonal

__all__ = [
    "AmbientTangent",
    "Constraint",
    "ConstraintSpec",
    "Packing",
    "StepContext",
    "Unconstrained",
    "available_constraints",
    "get_constraint_class",
    "make_constraint",
    "register_constraint",
    "Orthogonal",
    "Sphere",
    "Ball",
    "Circle",
    "NonNegative",
    "Box",
]
