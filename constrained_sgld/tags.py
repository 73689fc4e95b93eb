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


# layers whose weight is stored as (in, out), the transpose of nn.Linear's (out, in): (top-level
# package, class name), matched by name so that the package need not be installed
IN_OUT_LAYERS = {("transformers", "Conv1D")}


def _in_out_weights(model: nn.Module) -> Dict[int, str]:
    """id -> class of the weights of ``model``'s (in, out)-stored layers (IN_OUT_LAYERS)."""
    out: Dict[int, str] = {}
    for module in model.modules():
        cls = type(module)
        if (cls.__module__.split(".")[0], cls.__name__) in IN_OUT_LAYERS and isinstance(getattr(module, "weight", None), Tensor):
            out[id(module.weight)] = f"{cls.__module__}.{cls.__name__}"
    return out


def _check_in_out_layout(name: str, p: Tensor, layer: str, constraint: Constraint) -> None:
    """Refuse, naming the fix, a set whose axes would be the wrong ones on an (in, out) weight: the
    module says which axis holds the outputs, so a wrong split is never silent."""
    blocks = getattr(constraint, "blocks", 1)
    if blocks > 1 and getattr(constraint, "transposed", None) is False:
        raise ValueError(
            f"parameter {name!r} of shape {tuple(p.shape)} is the weight of {layer}, stored as (in, out): "
            f"blocks={blocks} would split its inputs, not its outputs (GPT-2's query, key and value are column "
            f"blocks). Pass ('orthogonal', {{'blocks': {blocks}, 'transposed': True}})"
        )
    if getattr(constraint, "dim", None) == "rows" and p.ndim == 2:
        raise ValueError(
            f"parameter {name!r} of shape {tuple(p.shape)} is the weight of {layer}, stored as (in, out): "
            f"'{constraint.name}' with dim='rows' would normalise each input's weights, not each output unit's. "
            f"Pass ('{constraint.name}', {{'dim': 0}}) for each output unit (dim=1 keeps the per-input norms)"
        )


def constrain(model: Union[nn.Module, Iterable[Tuple[str, Tensor]]], constraints: Mapping[str, Any]) -> Union[nn.Module, Any]:
    """Tag the parameters of ``model`` (a module, or ``(name, parameter)`` pairs) whose names
    match a pattern of ``constraints`` (``fnmatch`` patterns, the first match wins, as the
    optimisers' ``constraints=``) with that set. Returns ``model``. Every pattern must match some
    parameter (a typo is an error here, where nothing has been built yet); each spec is checked
    against the parameters it tags. A parameter tagged before gets its new tag.

    Given a module, the layers that store their weight as ``(in, out)`` (Hugging Face's ``Conv1D``,
    ``IN_OUT_LAYERS``) are known: a set whose split or norms would run along the inputs there
    (``orthogonal`` blocks without ``transposed=True``, ``sphere``/``ball`` per ``"rows"``) is
    refused with the spec to pass instead."""
    if not isinstance(constraints, Mapping):
        raise TypeError(f"constraints must be a mapping of name pattern -> spec, got {type(constraints).__name__}")
    rules = []
    for pattern, spec in constraints.items():
        if not isinstance(pattern, str):
            raise TypeError(f"constrain() takes name patterns (str) as keys, got {pattern!r}")
        rules.append((pattern, make_constraint(spec, where=f"pattern {pattern!r}")))
    named = _named(model)
    in_out = _in_out_weights(model) if isinstance(model, nn.Module) else {}
    used = set()
    tags: Dict[int, Tuple[Tensor, ConstraintTag]] = {}
    for name, p in named:
        for i, (pattern, constraint) in enumerate(rules):
            if fnmatch.fnmatchcase(name, pattern):
                used.add(i)
                if constraint is not None:
                    if id(p) in in_out:
                        _check_in_out_layout(name, p, in_out[id(p)], constraint)
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
