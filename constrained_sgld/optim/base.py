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

from .. import distributed
from ..constraints.base import UNCONSTRAINED, Constraint, StepContext, make_constraint

__all__ = ["ConstrainedLangevinOptimizer"]

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
        chain_id: int = 0,
        sync_free: bool = False,
    ) -> None:
        if isinstance(params, Tensor):
            raise TypeError("params must be an iterable of tensors, (name, tensor) pairs or dicts, not a Tensor")
        if seed is not None and (not isinstance(seed, int) or isinstance(seed, bool)):
            raise ValueError(f"seed must be an int or None, got {seed!r}")
        if not isinstance(chain_id, int) or isinstance(chain_id, bool) or chain_id < 0:
            raise ValueError(f"chain_id must be an int >= 0, got {chain_id!r}")
        for option, value in defaults.items():
            self._check_option(option, value, "")
        self._constraint_rules = self._parse_constraint_map(constraints)
        self._matched_rules: set = set()
        self._overridden_rules: set = set()  # matched only parameters whose group's "constraint" won
        self._aliases: Dict[str, str] = {}  # a tied weight's further name -> the name it was given under
        self._labels: Dict[Tensor, str] = {}
        self._moved: List[str] = []
        self._in_init = True
        if not isinstance(check_finite, bool):
            raise ValueError(f"check_finite must be True or False, got {check_finite!r}")
        if not isinstance(sync_free, bool):
            raise ValueError(f"sync_free must be True or False, got {sync_free!r}")
        self.check_finite = check_finite
        self.sync_free = sync_free
        self._skipped_steps: Optional[Tensor] = None  # sync-free: steps skipped for a non-finite gradient
        self._rejected_moves: Dict[int, Tensor] = {}  # sync-free: id(group) -> moves a set rejected
        # construction-time draw from the global RNG when no seed is given (never inside step);
        # under torch.distributed every rank takes rank 0's, so that DDP replicas add the same noise
        if seed is None:
            seed = distributed.broadcast_seed(int(torch.randint(0, 2**62, (1,)).item()))
        self._base_seed = int(seed)
        self._chain_id = chain_id
        self._generators: Dict[str, torch.Generator] = {}
        self._stream_keys: Dict[Tuple[str, Optional[int]], str] = {}  # (device, shard rank) -> stream
        self._pending_rng: Dict[str, Any] = {}  # loaded generator states not yet bound to a device
        self._noise_norms: Dict[int, Tensor] = {}  # id(group) -> norm of the last step's noise
        self._track_noise = False  # turned on by the first diagnostics() call (one extra pass per step)
        self._versions: Dict[Tensor, int] = {}  # parameter -> its version counter after our last update
        super().__init__(params, defaults)
        self._in_init = False
        self._warn_moved()
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
                warnings.warn(message, UserWarning, stacklevel=3)

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

    def _constraint_from_map(self, p: Tensor, name: Optional[str], overridden: bool = False) -> Optional[Constraint]:
        """The first rule matching ``p``; ``overridden``: the group's own key decides, so a match
        is only recorded (for the unmatched-pattern warning)."""
        for i, (key, constraint) in enumerate(self._constraint_rules):
            if isinstance(key, Tensor):
                hit = key is p
            else:
                if name is None:
                    if overridden:
                        continue
                    raise ValueError(
                        f"constraint pattern {key!r} needs parameter names: pass model.named_parameters() "
                        f"(or (name, tensor) pairs) instead of bare tensors"
                    )
                hit = fnmatch.fnmatchcase(name, key)
            if hit:
                (self._overridden_rules if overridden else self._matched_rules).add(i)
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
        for t, label in zip(tensors, labels):
            from_map = self._constraint_from_map(t, names and label, overridden=has_key)
            constraint = group_constraint if has_key else from_map
            if constraint is not None:
                constraint.check(t, label)
                self._check_sharding(t, label, constraint)
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

    # ------------------------------------------------------------------ noise generators
    def _generator(self, device: torch.device, shard: Optional[int] = None) -> torch.Generator:
        """The noise stream for ``device`` (and for the pieces of sharded parameters on rank ``shard``).

        Streams are named by device type and the order in which this optimiser first used devices
        of that type ("cpu", "cuda:0", "cuda:1", ... with "cuda:0" the first GPU used, whatever its
        index): DDP ranks, each on its own GPU, therefore share one stream, and a checkpoint saved
        on one rank resumes on any other. Seeds depend on ``seed``, ``chain_id``, that order and the
        shard rank only.
        """
        device = torch.device(device)
        key = self._stream_key(device, shard)
        gen = self._generators.get(key)
        if gen is None:
            gen = torch.Generator(device=device)
            gen.manual_seed(self._stream_seed(key))
            pending = self._pending_rng.pop(key, None)
            if pending is not None:
                gen.set_state(pending.cpu() if isinstance(pending, Tensor) else pending)
            self._generators[key] = gen
        return gen

    def _stream_key(self, device: torch.device, shard: Optional[int]) -> str:
        binding = (str(device), shard)
        key = self._stream_keys.get(binding)
        if key is None:
            if shard is not None:
                key = f"{self._stream_key(device, None)}/shard{shard}"
            elif device.type == "cpu":
                key = "cpu"
            else:
                used = sum(1 for d, s in self._stream_keys if s is None and torch.device(d).type == device.type)
                key = f"{device.type}:{used}"
            self._stream_keys[binding] = key
        return key

    def _stream_seed(self, key: str) -> int:
        device_key, _, shard = key.partition("/shard")
        ordinal = -1 if device_key == "cpu" else int(device_key.rpartition(":")[2])
        # distinct, reproducible streams: odd multipliers keep the low 32 bits (all that the CPU's
        # Mersenne Twister uses) distinct across chains, devices and shards
        seed = self._base_seed + 0x9E3779B97F4A7C15 * self._chain_id + 1_000_003 * (ordinal + 1)
        if shard:
            seed += 7_777_777 * (int(shard) + 1)
        return seed % (2**63)

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
            if group.get("constraint") is not None and not isinstance(group["constraint"], Constraint):
                raise ValueError(
                    f"param_groups[{self.param_groups.index(group)}]['constraint'] was set to {group['constraint']!r} "
                    f"{_STEP_TIME}; a group's constraint cannot be changed after construction (its state and "
                    "feasibility are set up then): build a new optimiser, or add the parameters with "
                    "add_param_group({'params': ..., 'constraint': ...}) from a fresh optimiser. No parameter was changed"
                )
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

    @staticmethod
    def _gradient_sum(grads: List[Tensor]) -> Tensor:
        """The sums of every gradient, as float32 on the first one's device: all finite unless some
        entry is inf or NaN, or (rarely) finite entries sum beyond the float range. One reduction
        per tensor, the cheapest full pass there is (a max-abs norm costs ~30x more on CPU)."""
        device = grads[0].device
        # summed in float32 at least: a float16 sum passes 65504 on ordinary gradients
        return torch.stack([g.sum(dtype=torch.promote_types(g.dtype, torch.float32)).to(device, torch.float32, non_blocking=True) for g in grads])

    def _raise_on_nonfinite(self, plan) -> None:
        grads = [distributed.local(g) for _, _, gs in plan for g in gs]
        if not grads:
            return
        # one host read per step (turn off with check_finite=False, or use sync_free=True); a
        # tripped screen is confirmed entry by entry before anything is reported (sums can overflow)
        if bool(self._gradient_sum(grads).isfinite().all()):
            return
        params = [p for _, ps, _ in plan for p in ps]
        bad = [self._label(p) for p, g in zip(params, grads) if not bool(g.isfinite().all())]
        if not bad:
            return
        raise FloatingPointError(
            f"non-finite gradient (inf or nan) in parameter(s) {', '.join(map(repr, bad))}; no parameter was changed"
        )

    def _param_state(self, p: Tensor, constraint: Constraint) -> Dict[str, Any]:
        state = self.state[p]
        if not state:
            piece = distributed.local(p.detach())
            state.update(constraint.init_state(piece))
            self._init_param_state(piece, constraint, state)
        return state

    @torch.no_grad()
    def step(self, closure: Optional[Callable[[], Any]] = None) -> Any:
        """One update of every parameter that has a gradient. Returns the closure's loss, if any."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        plan = self._collect()
        if not self.sync_free:
            if self.check_finite:
                self._raise_on_nonfinite(plan)
            for group, params, grads in plan:
                self._step_group(group, params, grads, StepContext())
            return loss
        # sync-free: nothing is read on the host; a non-finite gradient makes the whole step a no-op
        # on the device (parameters and states restored from a snapshot) instead of raising
        finite = self._all_finite(plan) if self.check_finite else None
        snapshot = self._snapshot(plan) if finite is not None else None
        for group, params, grads in plan:
            if finite is not None:
                grads = [torch.where(self._on(finite, g), distributed.local(g), 0.0) for g in grads]  # keep NaN out
            ctx = StepContext(sync_free=True)
            self._step_group(group, params, grads, ctx)
            rejected = ctx.rejected
            if rejected:
                count = torch.stack([r.to(rejected[0].device) for r in rejected]).sum()
                if finite is not None:
                    count = count * self._on(finite, count)
                previous = self._rejected_moves.get(id(group))
                self._rejected_moves[id(group)] = count if previous is None else previous + count.to(previous.device)
        if snapshot is not None:
            # keep the new values or restore the old ones, as multi-tensor calls per device: with
            # keep in {0, 1} and both sides finite, new * keep + old * (1 - keep) is exact
            for (_, floating), (current, saved) in snapshot.items():
                if floating:
                    keep = self._on(finite, current[0]).to(torch.float32)
                    torch._foreach_mul_(current, keep)
                    torch._foreach_add_(current, torch._foreach_mul(saved, 1.0 - keep))
                else:  # integer or boolean state of a user-defined set
                    for t, old in zip(current, saved):
                        t.copy_(torch.where(self._on(finite, t), t, old))
            skipped = (~finite).long()
            self._skipped_steps = skipped if self._skipped_steps is None else self._skipped_steps + skipped
        return loss

    @staticmethod
    def _on(flag: Tensor, like: Tensor) -> Tensor:
        return flag if flag.device == like.device else flag.to(like.device, non_blocking=True)

    def _all_finite(self, plan) -> Tensor:
        """One 0-dim boolean tensor (no host read): every gradient of the step is finite."""
        grads = [distributed.local(g) for _, _, gs in plan for g in gs]
        if not grads:
            return torch.ones((), dtype=torch.bool)
        # no exact confirmation without a host read: a step whose finite gradients sum beyond the
        # float range is skipped too (it would have been a wild step anyway)
        return self._gradient_sum(grads).isfinite().all()

    def _snapshot(self, plan) -> Dict[Tuple[torch.device, bool], Tuple[List[Tensor], List[Tensor]]]:
        """Per (device, floating point?): every tensor a step may change (parameters and their
        states, created first) and a copy of each."""
        current: Dict[Tuple[torch.device, bool], List[Tensor]] = {}
        for group, params, _ in plan:
            constraint = self._group_constraint(group)
            for p in params:
                state = self._param_state(p, constraint)
                for t in [distributed.local(p)] + [v for v in state.values() if isinstance(v, Tensor)]:
                    current.setdefault((t.device, t.is_floating_point()), []).append(t)
        return {key: (ts, [t.clone() for t in ts] if not key[1] else torch._foreach_mul(ts, 1.0)) for key, ts in current.items()}

    @staticmethod
    def _group_constraint(group: Dict[str, Any]) -> Constraint:
        """The group's set, with the flat set standing in for "no constraint"."""
        return group["constraint"] if group["constraint"] is not None else UNCONSTRAINED

    def _step_group(self, group: Dict[str, Any], params: List[Tensor], grads: List[Tensor], ctx: StepContext) -> None:
        if not params:
            return
        constraint = self._group_constraint(group)
        states = [self._param_state(p, constraint) for p in params]
        # sharded (DTensor) parameters: update this rank's piece in place
        pieces = [distributed.local(p) for p in params]
        tracking = not torch.compiler.is_compiling()  # dynamo cannot trace version counters
        if tracking:
            for p, piece, state in zip(params, pieces, states):
                # changed outside step() since our last update (model.load_state_dict, a manual
                # copy_): the version counter says so without reading the device
                seen = self._versions.get(p)
                if seen is not None and seen != piece._version:
                    constraint.sync_state(piece, state)
        grads = [distributed.local(g) for g in grads]
        noise = None
        if group["temperature"] > 0:
            noise = self._standard_normal_like(pieces, [distributed.shard_rank(p) for p in params])
            if self._track_noise:  # for diagnostics(): a tensor nobody reads unless asked
                group_norm = torch.linalg.vector_norm(torch.stack(torch._foreach_norm(noise)).float())
                self._noise_norms[id(group)] = group_norm * self._noise_scale(group)
        else:
            self._noise_norms.pop(id(group), None)  # diagnostics() reports 0 at temperature 0
        packing = self._packing(constraint, pieces)
        if packing is None:
            self._update_group(group, constraint, pieces, grads, states, noise, ctx)
        else:  # batched sets: pack every tensor of the step once, update the packs, unpack once
            keys = [k for k, v in states[0].items() if isinstance(v, Tensor)]
            packed = packing.pack(pieces)
            packed_states = [dict(zip(keys, values)) for values in zip(*(packing.pack([s[k] for s in states]) for k in keys))] or [{} for _ in packed]
            self._update_group(
                group, packing.constraint, packed, packing.pack(grads), packed_states,
                None if noise is None else packing.pack(noise), ctx,
            )
            packing.unpack_(packed, pieces)
            for k in keys:
                packing.unpack_([s[k] for s in packed_states], [s[k] for s in states])
        if tracking:
            for p, piece in zip(params, pieces):
                self._versions[p] = piece._version

    def _packing(self, constraint: Constraint, pieces: List[Tensor]):
        """How the group's tensors are packed for this step (the set decides; see ``Constraint.packing``)."""
        return constraint.packing(pieces)

    def _standard_normal_like(self, params: List[Tensor], shards: Optional[List[Optional[int]]] = None) -> List[Tensor]:
        """N(0, 1) tensors shaped like ``params``: one draw per (device, dtype, shard rank), split
        into views. ``shards[i]`` is this rank for a sharded parameter's piece (its own stream)."""
        shards = shards or [None] * len(params)
        buckets: Dict[Tuple[torch.device, torch.dtype, Optional[int]], List[int]] = {}
        for i, p in enumerate(params):
            buckets.setdefault((p.device, p.dtype, shards[i]), []).append(i)
        out: List[Optional[Tensor]] = [None] * len(params)
        for (device, dtype, shard), idx in buckets.items():
            sizes = [params[i].numel() for i in idx]
            flat = torch.randn(sum(sizes), generator=self._generator(device, shard), device=device, dtype=dtype)
            for i, chunk in zip(idx, flat.split(sizes)):
                out[i] = chunk.view(params[i].shape)
        return out  # type: ignore[return-value]

    # subclasses
    def _init_param_state(self, p: Tensor, constraint: Constraint, state: Dict[str, Any]) -> None:
        pass

    def _update_group(self, group, constraint, params, grads, states, noise, ctx: StepContext) -> None:
        """The scheme's update of one group's lists, in place (``ctx``: the step's context)."""
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
                    piece = distributed.local(p.detach())  # a sharded parameter: this rank's piece
                    v = c.state_violation(piece, self.state.get(p, {}))
                    vals.append(v.detach().to("cpu", torch.float64))
            out.append(torch.stack(vals).amax())
        return out

    # ------------------------------------------------------------------ diagnostics
    def _noise_scale(self, group: Dict[str, Any]) -> float:
        """Standard deviation per entry of the Gaussian noise this scheme adds (before projection)."""
        raise NotImplementedError

    def diagnostics(self) -> List[Dict[str, Tensor]]:
        """One dict of 0-dim tensors per parameter group (nothing is read to the host here):

        - ``violation``: the largest constraint violation (as :meth:`violations`);
        - ``grad_norm``: the norm of the group's current gradients;
        - ``noise_norm``: the norm of the Gaussian noise the last step drew for the group, times its
          scale per entry (0 at temperature 0). Recording it costs one pass over the noise, so it is
          recorded only once ``diagnostics()`` has been called: call it once before training to have
          it from the first step; until then it is NaN;
        - ``kinetic_temperature`` (underdamped only): the temperature the momenta show,
          ``sum |p|^2 / d`` with ``d`` the tangent dimension; at equilibrium it equals ``temperature``.

        With ``sync_free=True`` two counters since construction are added: ``rejected_moves``, the
        matrices whose move the set rejected (SHAKE not converged in its fixed iterations), and
        ``skipped_steps``, the steps skipped for a non-finite gradient (the same for every group).
        """
        self._track_noise = True
        out = []
        violations = self.violations()
        for group, violation in zip(self.param_groups, violations):
            pieces = [distributed.local(p.grad) for p in group["params"] if p.grad is not None]
            device = group["params"][0].device if group["params"] else torch.device("cpu")
            grad_norm = (
                torch.linalg.vector_norm(torch.stack(torch._foreach_norm(pieces)).float()) if pieces else torch.zeros((), device=device)
            )
            entry = {
                "violation": violation,
                "grad_norm": grad_norm,
                "noise_norm": (
                    torch.zeros((), device=device)
                    if group["temperature"] == 0
                    else self._noise_norms.get(id(group), torch.full((), float("nan"), device=device))
                ),
            }
            entry.update(self._extra_diagnostics(group))
            if self.sync_free:
                zero = torch.zeros((), dtype=torch.long, device=device)
                entry["rejected_moves"] = self._rejected_moves.get(id(group), zero)
                entry["skipped_steps"] = self._skipped_steps if self._skipped_steps is not None else zero
            out.append(entry)
        return out

    def _extra_diagnostics(self, group: Dict[str, Any]) -> Dict[str, Tensor]:
        return {}

    def _state_keys_missing(self, state: Dict[Any, Dict[str, Any]]) -> List[str]:
        """The per-parameter state keys this scheme needs that a loaded state lacks."""
        return []

    # ------------------------------------------------------------------ copy and pickle
    def __getstate__(self) -> Dict[str, Any]:
        # all of it (torch's Optimizer keeps only defaults, state and param_groups); generators as
        # their states, bound to devices again on first use as after load_state_dict, so a copy
        # continues the same noise stream; per-group records keyed by group index, not id
        state = self.__dict__.copy()
        state["_pending_rng"] = {**self._pending_rng, **{k: g.get_state() for k, g in self._generators.items()}}
        state["_generators"], state["_stream_keys"] = {}, {}
        index = {id(g): i for i, g in enumerate(self.param_groups)}
        state["_noise_norms"] = {index[k]: v for k, v in self._noise_norms.items() if k in index}
        state["_rejected_moves"] = {index[k]: v for k, v in self._rejected_moves.items() if k in index}
        return state

    def __setstate__(self, state: Dict[str, Any]) -> None:
        super().__setstate__(state)
        self._noise_norms = {id(self.param_groups[i]): v for i, v in self._noise_norms.items()}
        self._rejected_moves = {id(self.param_groups[i]): v for i, v in self._rejected_moves.items()}

    # ------------------------------------------------------------------ state_dict
    def state_dict(self) -> Dict[str, Any]:
        sd = super().state_dict()
        for g in sd["param_groups"]:
            c = g.get("constraint")
            g["constraint"] = None if c is None else list(c.spec())
        generators = dict(self._pending_rng)  # loaded, not yet bound to a device: kept as loaded
        generators.update({k: g.get_state() for k, g in self._generators.items()})
        sd["rng"] = {"base_seed": self._base_seed, "chain_id": self._chain_id, "generators": generators}
        sd["scheme"] = type(self).__name__
        return sd

    def load_state_dict(self, state_dict: Dict[str, Any]) -> None:
        sd = dict(state_dict)
        scheme = sd.pop("scheme", None)
        if scheme is not None and scheme != type(self).__name__:
            raise ValueError(f"state_dict was saved by {scheme}, not {type(self).__name__}: its per-parameter state does not fit this scheme")
        missing = self._state_keys_missing(sd.get("state", {}))
        if missing:
            raise ValueError(f"state_dict lacks {type(self).__name__}'s per-parameter state {missing} (was it saved by another optimiser?)")
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
        self._versions = {}
        if rng is not None:
            self._base_seed = int(rng["base_seed"])
            self._chain_id = int(rng.get("chain_id", 0))
            # streams are bound to devices again on first use, in the same order as before
            self._generators, self._stream_keys = {}, {}
            self._pending_rng = dict(rng["generators"])
