"""Constraints that travel with the parameter: ``constrain(model, {...})`` tags each matching
parameter with its set and name, and the optimisers read the tags wherever they are given bare
tensors, so that code which builds the optimiser from ``model.parameters()`` (Hugging Face's
``Trainer(optimizer_cls_and_kwargs=...)``, timm's ``create_optimizer_v2``, a Lightning module, a
training loop of one's own) keeps the constraints::

    cs.constrain(model, {"*.attn.c_attn.weight": ("orthogonal", {"blocks": 3}), "*.mlp.c_fc.weight": "sphere"})
    optim = cs.ConstrainedUnderdampedSGLD(model.parameters(), lr=1e-3)   # the tagged sets apply

A tag is a plain Python attribute of the ``Parameter`` object: the model's ``state_dict`` does not
change, and the optimiser's ``state_dict`` holds the sets in its groups as with ``constraints=``.
Resolution per parameter: a group's ``"constraint"`` key, then the ``constraints=`` mapping (its
name patterns match the tag's name when no name is given), then the tag. A parameter replaced by
another object (``fully_shard``, ``to_empty``, a new ``nn.Parameter``, and ``copy.deepcopy``, which
copies a ``Parameter``'s data but not its attributes) loses its tag: tag after such steps.
"""

from __future__ import annotations

import fnmatch
from typing import Any, Dict, Iterable, Mapping, Optional, Tuple, Union

from torch import Tensor, nn

from .constraints.base import Constraint, make_constraint

__all__ = ["constrain", "unconstrain", "constraint_tag", "ConstraintTag"]

#: the attribute of a tagged parameter
ATTRIBUTE = "_constrained_sgld_tag"


class ConstraintTag:
    """What `constrain()` attaches to a parameter: its ``name`` (for error messages and name
    patterns) and its ``constraint`` (a `Constraint`, or ``None``: tagged unconstrained)."""

    __slots__ = ("name", "constraint")

    def __init__(self, name: str, constraint: Optional[Constraint]):
        self.name = name
        self.constraint = constraint

    def __repr__(self) -> str:
        return f"ConstraintTag(name={self.name!r}, constraint={self.constraint!r})"


def _named(model: Union[nn.Module, Iterable[Tuple[str, Tensor]]]):
    if isinstance(model, nn.Module):
        return list(model.named_parameters())
    pairs = list(model)
    if not all(isinstance(x, tuple) and len(x) == 2 and isinstance(x[1], Tensor) for x in pairs):
        raise TypeError("constrain() takes a module or (name, parameter) pairs (model.named_parameters())")
    return pairs


def constrain(model: Union[nn.Module, Iterable[Tuple[str, Tensor]]], constraints: Mapping[str, Any]) -> Union[nn.Module, Any]:
    """Tag the parameters of ``model`` (a module, or ``(name, parameter)`` pairs) whose names
    match a pattern of ``constraints`` (``fnmatch`` patterns, the first match wins, as the
    optimisers' ``constraints=``) with that set. Returns ``model``. Every pattern must match some
    parameter (a typo is an error here, where nothing has been built yet); each spec is checked
    against the parameters it tags. A parameter tagged before gets its new tag."""
    if not isinstance(constraints, Mapping):
        raise TypeError(f"constraints must be a mapping of name pattern -> spec, got {type(constraints).__name__}")
    rules = []
    for pattern, spec in constraints.items():
        if not isinstance(pattern, str):
            raise TypeError(f"constrain() takes name patterns (str) as keys, got {pattern!r}")
        rules.append((pattern, make_constraint(spec, where=f"pattern {pattern!r}")))
    named = _named(model)
    used = set()
    tags: Dict[int, Tuple[Tensor, ConstraintTag]] = {}
    for name, p in named:
        for i, (pattern, constraint) in enumerate(rules):
            if fnmatch.fnmatchcase(name, pattern):
                used.add(i)
                if constraint is not None:
                    constraint.check(p, name)
                tags.setdefault(id(p), (p, ConstraintTag(name, constraint)))
                break
    unused = [pattern for i, (pattern, _) in enumerate(rules) if i not in used]
    if unused:
        raise ValueError(f"constraint pattern(s) {unused} match no parameter name of the model (model.named_parameters() lists the names)")
    for p, tag in tags.values():  # all checked first: a bad spec tags nothing
        setattr(p, ATTRIBUTE, tag)
    return model


def unconstrain(model: Union[nn.Module, Iterable[Tuple[str, Tensor]]]) -> Union[nn.Module, Any]:
    """Remove every tag `constrain()` put on ``model``'s parameters. Returns ``model``."""
    for _, p in _named(model):
        if hasattr(p, ATTRIBUTE):
            delattr(p, ATTRIBUTE)
    return model


def constraint_tag(p: Tensor) -> Optional[ConstraintTag]:
    """The tag of ``p``, or ``None``."""
    return getattr(p, ATTRIBUTE, None)
