"""Parameter groups: the ``constraints=`` mapping and its patterns, option validation, splitting
groups by constraint, feasibility at construction and the warnings about what was moved or not
matched."""

from __future__ import annotations

import fnmatch
import math
import warnings
from typing import Any, Callable, Dict, List, Mapping, Optional, Tuple

import torch
from torch import Tensor

from .. import distributed
from ..constraints.base import UNCONSTRAINED, Constraint, make_constraint
from ..tags import constraint_tag
from .preconditioner import check_preconditioner, make_preconditioner

STEP_TIME = "at step time"


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def lr_number(value: Any) -> Any:
    """A one-element real Tensor ``lr`` as a Python number (one host read: on a GPU one device
    read, as in torch's non-capturable steps); any other value as given, for the checks to judge."""
    if isinstance(value, Tensor) and value.numel() == 1 and not value.is_complex() and value.dtype != torch.bool:
        return float(value)
    return value


def _is_lr(value: Any, zero_ok: bool) -> bool:
    """A finite number > 0 (``>= 0`` with ``zero_ok``), or a one-element real Tensor holding one
    (``torch.optim`` takes both)."""
    value = lr_number(value)
    return _is_number(value) and (value >= 0 if zero_ok else value > 0)


#: the name segment ``torch.compile`` adds to a compiled module's parameter names (``_orig_mod.0.weight``)
COMPILED_SEGMENT = "_orig_mod"


def uncompiled_name(name: str) -> str:
    """``name`` as the module had it before ``torch.compile`` wrapped it: every ``_orig_mod``
    segment removed (``module._orig_mod.fc.weight`` from DDP around a compiled model -> ``module.fc.weight``)."""
    return ".".join(part for part in name.split(".") if part != COMPILED_SEGMENT)


#: torch.optim flags this package does not implement, and why; each is accepted off (False or None)
REFUSED_FLAGS = {
    "differentiable": "the step updates the parameters in place under torch.no_grad() through the sets' "
                      "projections and retractions, which autograd cannot differentiate through",
    "capturable": "use sync_free=True: this package's step that never reads a tensor on the host (what "
                  "capturable=True gives torch's optimisers); CUDA graph capture of it is not verified",
    "fused": "there is no fused kernel; the step always runs the sets' multi-tensor (foreach) operations, "
             "so leave fused at None",
}


def refuse_torch_flags(**flags: Any) -> None:
    """Raise ``ValueError`` for a ``torch.optim`` flag that is on (anything but False or None)."""
    for name, value in flags.items():
        if value is not None and value is not False:
            raise ValueError(f"{name}={value!r} is not supported: {REFUSED_FLAGS[name]}")


class GroupsMixin:
    """Grouping by constraint for `ConstrainedLangevinOptimizer`."""

    #: option name -> (check(value) -> bool, what the value must be)
    _option_rules: Dict[str, Tuple[Callable[[Any], bool], str]] = {
        "lr": (lambda v: _is_lr(v, zero_ok=False), "a finite number > 0 (a float or a one-element Tensor)"),
        "temperature": (lambda v: _is_number(v) and v >= 0, "a finite number >= 0"),
        "weight_decay": (lambda v: _is_number(v) and v >= 0, "a finite number >= 0"),
        "momentum": (lambda v: _is_number(v) and 0 <= v < 1, "a number in [0, 1)"),
        "foreach": (lambda v: v is None or isinstance(v, bool), "None, True or False"),
        "maximize": (lambda v: isinstance(v, bool), "True or False"),
    }

    @staticmethod
    def _parse_constraint_map(constraints: Optional[Mapping[Any, Any]]) -> List[Tuple[Any, Optional[Constraint]]]:
        if constraints is None:
            return []
        if not isinstance(constraints, Mapping):
            raise ValueError(f"constraints must be a mapping of parameter/pattern -> spec, got {type(constraints).__name__}")
        rules = []
        for key, spec in constraints.items():
            if not isinstance(key, (str, Tensor)):
                raise ValueError(f"constraints keys must be name patterns (str) or parameters (Tensor), got {key!r}")
            where = f"pattern {key!r}" if isinstance(key, str) else "a parameter given as key"
            rules.append((key, make_constraint(spec, where=where)))
        return rules

    def _constraint_from_map(self, p: Tensor, name: Optional[str], overridden: bool = False) -> Optional[Constraint]:
        """The first rule matching ``p``; ``overridden``: the group's own key decides, so a match
        is only recorded (for the unmatched-pattern warning)."""
        return self._rule_for(p, name, overridden)[1]

    def _rule_for(self, p: Tensor, name: Optional[str], overridden: bool = False, unnamed_ok: bool = False) -> Tuple[bool, Optional[Constraint]]:
        """``(matched, constraint)`` of the first rule matching ``p`` (a rule may map to None).
        ``unnamed_ok``: an unnamed ``p`` matches no name pattern (its group has tagged, named
        parameters) instead of being an error."""
        for i, (key, constraint) in enumerate(self._constraint_rules):
            if isinstance(key, Tensor):
                hit = key is p
            else:
                if name is None:
                    if overridden or unnamed_ok:
                        continue
                    raise ValueError(
                        f"constraint pattern {key!r} needs parameter names: pass model.named_parameters() "
                        f"(or (name, tensor) pairs) instead of bare tensors, or, where a framework builds the "
                        f"optimiser from model.parameters(), tag the parameters first with "
                        f"constrained_sgld.constrain(model, {{{key!r}: ...}}) and leave constraints= out"
                    )
                # a compiled model's names carry "_orig_mod.": patterns are written for the model's own
                hit = fnmatch.fnmatchcase(name, key) or fnmatch.fnmatchcase(uncompiled_name(name), key)
            if hit:
                (self._overridden_rules if overridden else self._matched_rules).add(i)
                return True, constraint
        return False, None

    @classmethod
    def _check_option(cls, option: str, value: Any, where: Any, at_step: bool = False) -> None:
        """Raise ``ValueError`` for a bad option; ``where`` (a string, or a callable giving one) says where."""
        rule = cls._option_rules.get(option)
        if rule is None:
            return
        ok, must_be = rule
        if at_step and option == "lr":  # schedulers may anneal to exactly 0
            ok, must_be = (lambda v: _is_lr(v, zero_ok=True)), "a finite number >= 0 (a float or a one-element Tensor)"
        if not ok(value):
            where = where() if callable(where) else where
            raise ValueError(f"invalid {option}={value!r}{(' ' + where) if where else ''}: {option} must be {must_be}")

    def _label(self, p: Tensor) -> str:
        return self._labels.get(p, f"<tensor of shape {tuple(p.shape)}>")

    def add_param_group(self, param_group: Dict[str, Any]) -> None:
        """Add a group; it is split so that each resulting group holds exactly one constraint."""
        if not isinstance(param_group, dict):
            raise TypeError(f"param_group must be a dict, got {type(param_group).__name__}")
        group = dict(param_group)
        raw = group.pop("params")
        raw = [raw] if isinstance(raw, Tensor) else list(raw)
        if isinstance(param_group.get("params"), set):
            raise TypeError("params must be an ordered collection (a list), not a set")
        names: Optional[List[str]] = group.pop("param_names", None)
        tensors: List[Tensor] = []
        pairs = [isinstance(x, tuple) for x in raw]
        if any(pairs) and not all(pairs):
            raise ValueError("give all parameters with names (name, tensor) or all without")
        if raw and all(pairs):
            names, tensors = [], []
            for n, t in raw:
                first = next((i for i, u in enumerate(tensors) if u is t), None)
                if first is None:
                    names.append(str(n))
                    tensors.append(t)
                else:  # named_parameters(remove_duplicate=False): a tied weight's second name
                    self._aliases[str(n)] = names[first]
        else:
            tensors = raw
        n_before = sum(len(g["params"]) for g in self.param_groups)
        for i, t in enumerate(tensors):
            if not isinstance(t, Tensor):
                raise TypeError(f"optimizer can only optimise Tensors, got {type(t).__name__} at position {i}")
        # tags (constrained_sgld.constrain) name and constrain bare tensors
        tags = [constraint_tag(t) for t in tensors]
        match_names = names if names is not None else [tag.name if tag is not None else None for tag in tags]
        labels = names if names is not None else [
            tag.name if tag is not None else f"params[{n_before + i}] (shape {tuple(t.shape)})" for i, (t, tag) in enumerate(zip(tensors, tags))
        ]

        where = f"in parameter group of {labels[0]!r}" if labels else ""
        for option, default in self.defaults.items():
            group.setdefault(option, default)
            self._check_option(option, group[option], where)
        if "preconditioner" in group:  # plain data, one dict per group (never shared with the defaults)
            group["preconditioner"] = make_preconditioner(group["preconditioner"], where)

        seen = {p for g in self.param_groups for p in g["params"]}
        for t, label in zip(tensors, labels):
            if t in seen:
                raise ValueError(f"parameter {label!r} is given twice; each parameter may appear in one group only")
            if not (t.is_leaf or t.retains_grad):
                raise ValueError(f"parameter {label!r} is not a leaf tensor and cannot be optimised")
            if t.is_complex():
                raise ValueError(
                    f"parameter {label!r} is complex ({t.dtype}); complex parameters are not supported "
                    "(the noise, the finiteness check and the sets assume real entries): optimise its "
                    "real and imaginary parts as real tensors (torch.view_as_real)"
                )
            seen.add(t)

        # resolve one constraint per parameter: the group's "constraint" key wins over the mapping
        has_key = "constraint" in group
        group_constraint = make_constraint(group.pop("constraint"), where=where) if has_key else None
        split: Dict[Any, Dict[str, Any]] = {}
        for t, label, match_name, tag in zip(tensors, labels, match_names, tags):
            matched, from_map = self._rule_for(t, match_name, overridden=has_key, unnamed_ok=any(tag is not None for tag in tags))
            # the group's key, then the constraints= mapping, then the parameter's own tag
            constraint = group_constraint if has_key else from_map if matched or tag is None else tag.constraint
            if constraint is not None:
                constraint.check(t, label)
                self._check_sharding(t, label, constraint)
            key = constraint if constraint is not None else UNCONSTRAINED
            sub = split.setdefault(key, {"params": [], "names": [], "constraint": constraint})
            sub["params"].append(t)
            sub["names"].append(label)

        for sub in split.values():  # every part checked before any is added
            check_preconditioner(
                group.get("preconditioner"), sub["constraint"] if sub["constraint"] is not None else UNCONSTRAINED,
                sub["params"], sub["names"], group["temperature"], [bool(distributed.sharded_dims(t)) for t in sub["params"]], where,
            )
        for sub in split.values():
            new_group = dict(group)
            new_group["constraint"] = sub["constraint"]
            new_group["params"] = sub["params"]
            if names is not None:
                new_group["param_names"] = sub["names"]
            for t, label in zip(sub["params"], sub["names"]):
                self._labels[t] = label
            super().add_param_group(new_group)
            if sub["constraint"] is not None:
                self._make_feasible(sub["constraint"], sub["params"])
        if not getattr(self, "_in_init", False):
            self._warn_moved()

    @staticmethod
    def _check_sharding(t: Tensor, label: str, constraint: Constraint) -> None:
        dims = distributed.sharded_dims(t)
        if dims and not constraint.shard_local(t, dims):
            raise ValueError(
                f"parameter {label!r} is sharded along dim(s) {list(dims)} (a DTensor, e.g. from FSDP's "
                f"fully_shard), but the '{constraint.name}' constraint needs the whole "
                f"{constraint.couples} on one rank. Keep this parameter "
                "unsharded (apply fully_shard to the other modules only, or shard along dims the set does "
                "not couple), or use a set that acts entry by entry (circle, nonnegative, box)"
            )

    @torch.no_grad()
    def _make_feasible(self, constraint: Constraint, params: List[Tensor]) -> None:
        for p in params:
            piece = distributed.local(p.detach())
            if not bool(constraint.violation(piece) <= constraint.tolerance(p.dtype)):
                if not bool(piece.isfinite().all()):  # no set has a nearest point to a NaN
                    raise ValueError(
                        f"parameter {self._label(p)!r} has non-finite entries (inf or nan), so it cannot be projected onto "
                        f"the '{constraint.name}' set; initialise it first (torch.empty leaves memory as it found it; "
                        "constrained_sgld.init has an initialiser per set)"
                    )
                piece.copy_(constraint.project(piece))
                self._moved.append(self._label(p))

    def _warn_moved(self) -> None:
        if self._moved:
            warnings.warn(
                "projected onto their constraint sets (they were not feasible): " + ", ".join(self._moved),
                UserWarning,
                stacklevel=4,
            )
            self._moved = []

    def _warn_unmatched(self) -> None:
        """Warn about each name pattern of ``constraints=`` that matched no parameter, saying why."""
        for i, (key, _) in enumerate(self._constraint_rules):
            if isinstance(key, str) and i not in self._matched_rules:
                aliases = [a for a in self._aliases if fnmatch.fnmatchcase(a, key)]
                if i in self._overridden_rules:
                    message = f"constraint pattern {key!r} matched only parameters whose group sets its own 'constraint', which wins"
                elif aliases:
                    message = (
                        f"constraint pattern {key!r} names {aliases[0]!r}, an alias of {self._aliases[aliases[0]]!r} "
                        f"(a tied weight, already given under that name): give the constraint under {self._aliases[aliases[0]]!r}"
                    )
                else:
                    message = (
                        f"constraint pattern {key!r} matches no parameter name (model.named_parameters() lists a "
                        "tied or shared weight under its first name only)"
                    )
                warnings.warn(message, UserWarning, stacklevel=4)
