"""What both constrained Langevin optimisers share: grouping by constraint, validation, the noise
generators, the pre-step checks and ``state_dict``.

Data flows one way: parameters -> groups (one constraint each) -> per-group tensor lists -> the
scheme's pure update function -> the constraint's operations -> parameters.
"""

from __future__ import annotations

import fnmatch
import math
import warnings
from typing import Any, Callable, Dict, Iterable, List, Mapping, Optional, Tuple

import torch
from torch import Tensor

from ..constraints.base import UNCONSTRAINED, Constraint, make_constraint

__all__ = ["ConstrainedLangevinOptimizer", "scaled_force", "scaled_forces"]


def scaled_force(grad: Tensor, param: Tensor, weight_decay: float, scale: float) -> Tensor:
    """``scale * (grad + weight_decay * param)``, as a new tensor (the force of ``U + wd/2 |x|^2``)."""
    if weight_decay == 0:
        return grad.mul(scale)
    return torch.add(grad, param, alpha=weight_decay).mul_(scale)


def scaled_forces(grads: List[Tensor], params: List[Tensor], weight_decay: float, scale: float) -> List[Tensor]:
    """Multi-tensor twin of :func:`scaled_force`."""
    if weight_decay == 0:
        return torch._foreach_mul(grads, scale)
    forces = torch._foreach_add(grads, params, alpha=weight_decay)
    torch._foreach_mul_(forces, scale)
    return forces

_STEP_TIME = "at step time"


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


class ConstrainedLangevinOptimizer(torch.optim.Optimizer):
    """Base class: subclasses define ``_scheme_defaults``, ``_init_param_state`` and ``_update_group``."""

    #: option name -> (check(value) -> bool, what the value must be)
    _option_rules: Dict[str, Tuple[Callable[[Any], bool], str]] = {
        "lr": (lambda v: _is_number(v) and v > 0, "a finite number > 0"),
        "temperature": (lambda v: _is_number(v) and v >= 0, "a finite number >= 0"),
        "weight_decay": (lambda v: _is_number(v) and v >= 0, "a finite number >= 0"),
        "momentum": (lambda v: _is_number(v) and 0 <= v < 1, "a number in [0, 1)"),
        "foreach": (lambda v: isinstance(v, bool), "True or False"),
    }

    def __init__(
        self,
        params: Iterable[Any],
        defaults: Dict[str, Any],
        *,
        constraints: Optional[Mapping[Any, Any]] = None,
        seed: Optional[int] = None,
        check_finite: bool = True,
    ) -> None:
        if isinstance(params, Tensor):
            raise TypeError("params must be an iterable of tensors, (name, tensor) pairs or dicts, not a Tensor")
        if seed is not None and (not isinstance(seed, int) or isinstance(seed, bool)):
            raise ValueError(f"seed must be an int or None, got {seed!r}")
        for option, value in defaults.items():
            self._check_option(option, value, "")
        self._constraint_rules = self._parse_constraint_map(constraints)
        self._matched_rules: set = set()
        self._labels: Dict[Tensor, str] = {}
        self._moved: List[str] = []
        self._in_init = True
        self.check_finite = bool(check_finite)
        # construction-time draw from the global RNG when no seed is given (never inside step)
        self._base_seed = int(seed) if seed is not None else int(torch.randint(0, 2**62, (1,)).item())
        self._generators: Dict[str, torch.Generator] = {}
        super().__init__(params, defaults)
        self._in_init = False
        self._warn_moved()
        for i, (key, _) in enumerate(self._constraint_rules):
            if isinstance(key, str) and i not in self._matched_rules:
                warnings.warn(f"constraint pattern {key!r} matches no parameter name", UserWarning, stacklevel=3)

    # ------------------------------------------------------------------ constraints= mapping
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

    def _constraint_from_map(self, p: Tensor, name: Optional[str]) -> Optional[Constraint]:
        for i, (key, constraint) in enumerate(self._constraint_rules):
            if isinstance(key, Tensor):
                hit = key is p
            else:
                if name is None:
                    raise ValueError(
                        f"constraint pattern {key!r} needs parameter names: pass model.named_parameters() "
                        f"(or (name, tensor) pairs) instead of bare tensors"
                    )
                hit = fnmatch.fnmatchcase(name, key)
            if hit:
                self._matched_rules.add(i)
                return constraint
        return None

    # ------------------------------------------------------------------ validation
    @classmethod
    def _check_option(cls, option: str, value: Any, where: Any, at_step: bool = False) -> None:
        """Raise ``ValueError`` for a bad option; ``where`` (a string, or a callable giving one) says where."""
        rule = cls._option_rules.get(option)
        if rule is None:
            return
        ok, must_be = rule
        if at_step and option == "lr":  # schedulers may anneal to exactly 0
            ok, must_be = (lambda v: _is_number(v) and v >= 0), "a finite number >= 0"
        if not ok(value):
            where = where() if callable(where) else where
            raise ValueError(f"invalid {option}={value!r}{(' ' + where) if where else ''}: {option} must be {must_be}")

    def _label(self, p: Tensor) -> str:
        return self._labels.get(p, f"<tensor of shape {tuple(p.shape)}>")

    # ------------------------------------------------------------------ groups
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
            names = [str(n) for n, _ in raw]
            tensors = [t for _, t in raw]
        else:
            tensors = raw
        n_before = sum(len(g["params"]) for g in self.param_groups)
        for i, t in enumerate(tensors):
            if not isinstance(t, Tensor):
                raise TypeError(f"optimizer can only optimise Tensors, got {type(t).__name__} at position {i}")
        labels = names if names is not None else [f"params[{n_before + i}] (shape {tuple(t.shape)})" for i, t in enumerate(tensors)]

        where = f"in parameter group of {labels[0]!r}" if labels else ""
        for option, default in self.defaults.items():
            group.setdefault(option, default)
            self._check_option(option, group[option], where)

        seen = {p for g in self.param_groups for p in g["params"]}
        for t, label in zip(tensors, labels):
            if t in seen:
                raise ValueError(f"parameter {label!r} is given twice; each parameter may appear in one group only")
            if not (t.is_leaf or t.retains_grad):
                raise ValueError(f"parameter {label!r} is not a leaf tensor and cannot be optimised")
            seen.add(t)

        # resolve one constraint per parameter: the group's "constraint" key wins over the mapping
        has_key = "constraint" in group
        group_constraint = make_constraint(group.pop("constraint"), where=where) if has_key else None
        split: Dict[Any, Dict[str, Any]] = {}
        for t, label in zip(tensors, labels):
            constraint = group_constraint if has_key else self._constraint_from_map(t, names and label)
            if constraint is not None:
                constraint.check(t, label)
            key = constraint if constraint is not None else UNCONSTRAINED
            sub = split.setdefault(key, {"params": [], "names": [], "constraint": constraint})
            sub["params"].append(t)
            sub["names"].append(label)

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

    @torch.no_grad()
    def _make_feasible(self, constraint: Constraint, params: List[Tensor]) -> None:
        for p in params:
            if not bool(constraint.violation(p.detach()) <= constraint.tolerance(p.dtype)):
                p.copy_(constraint.project(p.detach()))
                self._moved.append(self._label(p))

    def _warn_moved(self) -> None:
        if self._moved:
            warnings.warn(
                "projected onto their constraint sets (they were not feasible): " + ", ".join(self._moved),
                UserWarning,
                stacklevel=4,
            )
            self._moved = []

    # ------------------------------------------------------------------ noise generators
    def _generator(self, device: torch.device) -> torch.Generator:
        key = str(device)
        gen = self._generators.get(key)
        if gen is None:
            gen = torch.Generator(device=device)
            index = device.index if device.index is not None else -1
            # distinct, reproducible streams per device
            gen.manual_seed((self._base_seed + 1_000_003 * (index + 1)) % (2**63))
            self._generators[key] = gen
        return gen

    # ------------------------------------------------------------------ step
    def _collect(self) -> List[Tuple[Dict[str, Any], List[Tensor], List[Tensor]]]:
        """Per group: the parameters that have a gradient, and the gradients; validates everything."""
        plan = []
        for group in self.param_groups:
            def where(group=group):  # formatted only when an option is bad
                first = f"in parameter group of {self._label(group['params'][0])!r} " if group["params"] else ""
                return first + _STEP_TIME

            for option in self._option_rules:
                if option in group:
                    self._check_option(option, group[option], where, at_step=True)
            params, grads = [], []
            for p in group["params"]:
                if p.grad is None:
                    continue
                if p.grad.is_sparse:
                    raise ValueError(f"parameter {self._label(p)!r} has a sparse gradient; sparse gradients are not supported")
                params.append(p)
                grads.append(p.grad)
            plan.append((group, params, grads))
        return plan

    def _raise_on_nonfinite(self, plan) -> None:
        grads = [g for _, _, gs in plan for g in gs]
        if not grads:
            return
        # fast screen: a sum is non-finite whenever its tensor holds an inf or nan (one cheap pass, one
        # host read per step; turn off with check_finite=False). A huge finite gradient can overflow
        # the sum, so a tripped screen is confirmed exactly before anything is reported.
        sums = torch.stack([g.sum().to(grads[0].device, torch.float32) for g in grads])
        if bool(sums.isfinite().all()):
            return
        finite = [bool(g.isfinite().all()) for g in grads]
        if all(finite):
            return
        params = [p for _, ps, _ in plan for p in ps]
        bad = [self._label(p) for p, ok in zip(params, finite) if not ok]
        raise FloatingPointError(
            f"non-finite gradient (inf or nan) in parameter(s) {', '.join(map(repr, bad))}; no parameter was changed"
        )

    def _param_state(self, p: Tensor, constraint: Constraint) -> Dict[str, Any]:
        state = self.state[p]
        if not state:
            state.update(constraint.init_state(p.detach()))
            self._init_param_state(p, constraint, state)
        return state

    @torch.no_grad()
    def step(self, closure: Optional[Callable[[], Any]] = None) -> Any:
        """One update of every parameter that has a gradient. Returns the closure's loss, if any."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        plan = self._collect()
        if self.check_finite:
            self._raise_on_nonfinite(plan)
        for group, params, grads in plan:
            if not params:
                continue
            constraint = group["constraint"] if group["constraint"] is not None else UNCONSTRAINED
            states = [self._param_state(p, constraint) for p in params]
            noise = self._standard_normal_like(params) if group["temperature"] > 0 else None
            self._update_group(group, constraint, params, grads, states, noise)
        return loss

    def _standard_normal_like(self, params: List[Tensor]) -> List[Tensor]:
        """N(0, 1) tensors shaped like ``params``: one draw per (device, dtype), split into views."""
        buckets: Dict[Tuple[torch.device, torch.dtype], List[int]] = {}
        for i, p in enumerate(params):
            buckets.setdefault((p.device, p.dtype), []).append(i)
        out: List[Optional[Tensor]] = [None] * len(params)
        for (device, dtype), idx in buckets.items():
            sizes = [params[i].numel() for i in idx]
            flat = torch.randn(sum(sizes), generator=self._generator(device), device=device, dtype=dtype)
            for i, chunk in zip(idx, flat.split(sizes)):
                out[i] = chunk.view(params[i].shape)
        return out  # type: ignore[return-value]

    # subclasses
    def _init_param_state(self, p: Tensor, constraint: Constraint, state: Dict[str, Any]) -> None:
        pass

    def _update_group(self, group, constraint, params, grads, states, noise) -> None:
        raise NotImplementedError

    # ------------------------------------------------------------------ diagnostics
    @torch.no_grad()
    def violations(self) -> List[Tensor]:
        """Largest constraint violation per group, as tensors (0 for unconstrained groups)."""
        out = []
        for group in self.param_groups:
            c = group["constraint"]
            vals = [torch.zeros((), dtype=torch.float64)]
            if c is not None:
                for p in group["params"]:
                    v = c.violation(p.detach())
                    aux = self.state.get(p, {}).get("aux")
                    if aux is not None and hasattr(c, "aux_violation"):
                        v = torch.maximum(v, c.aux_violation(p.detach(), aux))
                    vals.append(v.detach().to("cpu", torch.float64))
            out.append(torch.stack(vals).amax())
        return out

    # ------------------------------------------------------------------ state_dict
    def state_dict(self) -> Dict[str, Any]:
        sd = super().state_dict()
        for g in sd["param_groups"]:
            c = g.get("constraint")
            g["constraint"] = None if c is None else list(c.spec())
        sd["rng"] = {
            "base_seed": self._base_seed,
            "generators": {k: g.get_state() for k, g in self._generators.items()},
        }
        return sd

    def load_state_dict(self, state_dict: Dict[str, Any]) -> None:
        sd = dict(state_dict)
        saved_groups = [dict(g) for g in sd["param_groups"]]
        if len(saved_groups) != len(self.param_groups):
            raise ValueError(
                f"state_dict has {len(saved_groups)} parameter groups but this optimiser has "
                f"{len(self.param_groups)} (groups are split by constraint; build the optimiser the same way)"
            )
        for i, (saved, ours) in enumerate(zip(saved_groups, self.param_groups)):
            mine = ours["constraint"]
            mine_spec = None if mine is None else list(mine.spec())
            theirs = saved.get("constraint")
            theirs = None if theirs is None else [theirs[0], dict(theirs[1])]
            if theirs != mine_spec:
                raise ValueError(f"state_dict's group {i} has constraint {theirs!r} but this optimiser's has {mine_spec!r}")
            saved["constraint"] = mine
        sd["param_groups"] = saved_groups
        rng = sd.pop("rng", None)
        super().load_state_dict(sd)
        if rng is not None:
            self._base_seed = int(rng["base_seed"])
            self._generators = {}
            for key, gen_state in rng["generators"].items():
                try:
                    gen = self._generator(torch.device(key))
                except RuntimeError:  # a device this machine lacks: its stream starts afresh if used
                    continue
                gen.set_state(gen_state.cpu() if isinstance(gen_state, Tensor) else gen_state)
