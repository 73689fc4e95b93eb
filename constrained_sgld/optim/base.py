"""What both constrained Langevin optimisers share: the step. Each concern it relies on lives in a
module of its own, composed here: groups and patterns (``groups``), the noise streams (``noise``),
the finiteness guards and snapshots (``guards``), ``diagnostics`` and checkpoints (``checkpoint``).

Data flows one way: parameters -> groups (one constraint each) -> per-group tensor lists -> the
scheme's pure update function -> the constraint's operations -> parameters.
"""

from __future__ import annotations

from typing import Any, Callable, Dict, Iterable, List, Mapping, Optional, Tuple

import torch
from torch import Tensor

from .. import distributed
from ..constraints.base import UNCONSTRAINED, Constraint, StepContext
from .checkpoint import CheckpointMixin
from .diagnostics import DiagnosticsMixin
from .groups import STEP_TIME, GroupsMixin, lr_number
from .guards import GuardsMixin
from .noise import NoiseStreamsMixin
from .preconditioner import PRECONDITIONER_KEYS, check_preconditioner, make_preconditioner, needs_state, precondition, preconditioner_state

__all__ = ["ConstrainedLangevinOptimizer"]


class ConstrainedLangevinOptimizer(GroupsMixin, NoiseStreamsMixin, GuardsMixin, DiagnosticsMixin, CheckpointMixin, torch.optim.Optimizer):
    """Base class: subclasses define ``_noise_scale``, ``_init_param_state`` and ``_update_group``
    (the scheme); this class gathers each group's tensors, draws the noise, preconditions, packs,
    guards and steps."""

    #: the scheme's update reads the mass (``mass=`` of ``_update_group``) even when packed: the
    #: thermostat's kinetic energy does; the other schemes need only the preconditioned forces
    _uses_mass = False

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
        self._step_lrs: Dict[int, float] = {}  # id(group) -> its lr as read at the start of this step
        super().__init__(params, defaults)
        self._in_init = False
        self._warn_moved()
        self._warn_unmatched()

    def _collect(self) -> List[Tuple[Dict[str, Any], List[Tensor], List[Tensor]]]:
        """Per group: the parameters that have a gradient, and the gradients; validates everything."""
        plan = []
        for group in self.param_groups:
            def where(group=group):  # formatted only when an option is bad
                first = f"in parameter group of {self._label(group['params'][0])!r} " if group["params"] else ""
                return first + STEP_TIME

            # a Tensor lr is read once per step, here; the checks and the update use that number
            self._step_lrs[id(group)] = lr = lr_number(group["lr"])
            for option in self._option_rules:
                if option in group:
                    self._check_option(option, lr if option == "lr" else group[option], where, at_step=True)
            spec = group.get("preconditioner")
            if spec is not None:  # validated again: a user may edit a group's options between steps
                checked = make_preconditioner(spec, where)
                if checked != spec:
                    group["preconditioner"] = checked
            if group.get("constraint") is not None and not isinstance(group["constraint"], Constraint):
                raise ValueError(
                    f"param_groups[{self.param_groups.index(group)}]['constraint'] was set to {group['constraint']!r} "
                    f"{STEP_TIME}; a group's constraint cannot be changed after construction (its state and "
                    "feasibility are set up then): build a new optimiser, or add the parameters with "
                    "add_param_group({'params': ..., 'constraint': ...}) from a fresh optimiser. No parameter was changed"
                )
            if spec is not None:  # before any parameter moves: a kind the group's set or temperature refuses
                check_preconditioner(
                    group["preconditioner"], self._group_constraint(group), [distributed.local(p) for p in group["params"]],
                    [self._label(p) for p in group["params"]], group["temperature"],
                    [bool(distributed.sharded_dims(p)) for p in group["params"]], where,
                )
            params, grads = [], []
            maximize = group.get("maximize", False)  # a group loaded from an older checkpoint has no key
            for p in group["params"]:
                if p.grad is None:
                    continue
                if p.grad.is_sparse:
                    raise ValueError(f"parameter {self._label(p)!r} has a sparse gradient; sparse gradients are not supported")
                params.append(p)
                grads.append(-p.grad if maximize else p.grad)  # ascend: the potential is -loss
            plan.append((group, params, grads))
        return plan

    def _param_state(self, p: Tensor, constraint: Constraint, group: Optional[Dict[str, Any]] = None) -> Dict[str, Any]:
        """``p``'s state, created on first use (and the preconditioner's, when ``group`` has one).
        A parameter whose scheme and set keep nothing gets no entry in ``self.state`` (as
        ``torch.optim.SGD`` without momentum), only an empty dict for this step."""
        state = self.state.get(p)
        if state is None:
            state = {}
        if not state or state.keys() <= set(PRECONDITIONER_KEYS):  # a mass set before the first step
            piece = distributed.local(p.detach())
            state.update(constraint.init_state(piece))
            self._init_param_state(piece, constraint, state)
        spec = None if group is None else group.get("preconditioner")
        if spec is not None and needs_state(spec, state, p):
            preconditioner_state(constraint, distributed.local(p.detach()), state, spec)
        if state and p not in self.state:
            self.state[p] = state
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
            for (group, params, grads), noise in zip(plan, self._noise_for(plan)):
                self._step_group(group, params, grads, StepContext(), noise)
            self._remember_versions(plan)
            return loss
        # sync-free: nothing is read on the host; a non-finite gradient makes the whole step a no-op
        # on the device (parameters and states restored from a snapshot) instead of raising
        finite = self._all_finite(plan) if self.check_finite else None
        snapshot = self._snapshot(plan) if finite is not None else None
        for (group, params, grads), noise in zip(plan, self._noise_for(plan)):
            if finite is not None:
                grads = [torch.where(self._on(finite, g), distributed.local(g), 0.0) for g in grads]  # keep NaN out
            ctx = StepContext(sync_free=True)
            self._step_group(group, params, grads, ctx, noise)
            rejected = ctx.rejected
            if rejected:
                count = torch.stack([r.to(rejected[0].device) for r in rejected]).sum()
                if finite is not None:
                    count = count * self._on(finite, count)
                previous = self._rejected_moves.get(id(group))
                self._rejected_moves[id(group)] = count if previous is None else previous + count.to(previous.device)
        if snapshot is not None:
            # keep the new values or restore the old ones: one select per tensor, exact whatever
            # the new values hold; eager, in place (an element-wise op may write to its input);
            # compiled, as a copy (inductor fuses it; the out= form costs it several passes)
            compiling = torch.compiler.is_compiling()
            for (device, _), (current, saved) in snapshot.items():
                keep = self._on(finite, current[0])
                for t, old in zip(current, saved):
                    if compiling:
                        t.copy_(torch.where(keep, t, old))
                    else:
                        torch.where(keep, t, old, out=t)
            skipped = (~finite).long()
            self._skipped_steps = skipped if self._skipped_steps is None else self._skipped_steps + skipped
        # after the restore, which writes every parameter: read earlier, the counters would call
        # every parameter changed from outside, and the next step would re-derive every state
        self._remember_versions(plan)
        return loss

    def _remember_versions(self, plan) -> None:
        """Note each stepped parameter's version counter, so that the next step can tell a change
        made outside ``step`` (dynamo cannot trace version counters: not under torch.compile)."""
        if torch.compiler.is_compiling():
            return
        for _, params, _ in plan:
            for p in params:
                self._versions[p] = distributed.local(p)._version

    @staticmethod
    def _group_constraint(group: Dict[str, Any]) -> Constraint:
        """The group's set, with the flat set standing in for "no constraint"."""
        return group["constraint"] if group["constraint"] is not None else UNCONSTRAINED

    def _lr_of(self, group: Dict[str, Any]) -> float:
        """The group's lr as a number, as read for this step (``_collect``)."""
        return self._step_lrs[id(group)]

    def _noise_for(self, plan) -> List[Optional[List[Tensor]]]:
        """``_draw_noise(plan)``, called only when some group draws: at temperature 0 the step has
        no graph break and compiles whole (``fullgraph=True``)."""
        if any(params and group["temperature"] > 0 for group, params, _ in plan):
            return self._draw_noise(plan)
        return [None] * len(plan)

    @torch.compiler.disable
    def _draw_noise(self, plan) -> List[Optional[List[Tensor]]]:
        """Each group's standard normal draws for this step (``None`` where it adds no noise), in
        group order. Drawn before any update, in one call that torch.compile leaves to eager: dynamo
        cannot trace a draw from the optimiser's own ``torch.Generator``, and a graph break there
        inside the step's loops would make it fall back to compiling each helper call apart,
        guarded on each parameter's identity (past the recompile limit with many matrices)."""
        draws: List[Optional[List[Tensor]]] = []
        for group, params, _ in plan:
            if params and group["temperature"] > 0 and self._lr_of(group) != 0:
                draws.append(self._standard_normal_like([distributed.local(p) for p in params], [distributed.shard_rank(p) for p in params]))
            else:
                draws.append(None)
        return draws

    def _step_group(self, group: Dict[str, Any], params: List[Tensor], grads: List[Tensor], ctx: StepContext,
                    noise: Optional[List[Tensor]] = None) -> None:
        """One group's update; ``noise``: its standard normal draws (``None`` at temperature 0)."""
        if not params:
            return
        constraint = self._group_constraint(group)
        states = [self._param_state(p, constraint, group) for p in params]
        if self._lr_of(group) == 0:
            # a step of zero time (an annealed lr, or DCP's state-initialising step) is the identity:
            # the states exist now, nothing moves and no noise is drawn
            self._noise_norms.pop(id(group), None)
            return
        # sharded (DTensor) parameters: update this rank's piece in place
        pieces = [distributed.local(p) for p in params]
        if not torch.compiler.is_compiling():  # dynamo cannot trace version counters
            for p, piece, state in zip(params, pieces, states):
                # changed outside step() since our last update (model.load_state_dict, a manual
                # copy_): the version counter says so without reading the device
                seen = self._versions.get(p)
                if seen is not None and seen != piece._version:
                    constraint.sync_state(piece, state)
        grads = [distributed.local(g) for g in grads]
        if noise is None:
            self._noise_norms.pop(id(group), None)  # diagnostics() reports 0 at temperature 0
        weight_decay, mass = group["weight_decay"], None
        spec = group.get("preconditioner")
        if spec is not None:
            # the scheme gets the preconditioned forces ((g + wd x) / M for RMSprop) and noise / sqrt(M);
            # weight decay is folded in, or left to the scheme where it is decoupled
            grads, noise, weight_decay, mass = precondition(spec, constraint, pieces, grads, noise, states, weight_decay)
        if noise is not None and self._track_noise:  # for diagnostics(): a tensor nobody reads unless asked
            # after the preconditioner's M^-1/2: the noise the step adds
            group_norm = torch.linalg.vector_norm(torch.stack(torch._foreach_norm(noise)).float())
            self._noise_norms[id(group)] = group_norm * self._noise_scale(group)
        packing = self._packing(constraint, pieces)
        if packing is None:
            self._update_group(group, constraint, pieces, grads, states, noise, ctx, weight_decay=weight_decay, mass=mass)
        else:  # batched sets: pack every tensor of the step once, update the packs, unpack once
            keys = [k for k, v in states[0].items() if isinstance(v, Tensor) and k not in PRECONDITIONER_KEYS]
            packed = packing.pack(pieces)
            packed_states = [dict(zip(keys, values)) for values in zip(*(packing.pack([s[k] for s in states]) for k in keys))] or [{} for _ in packed]
            if mass is not None:  # one scalar per matrix, spread over it for the packed layout
                mass = packing.pack([m.expand_as(x) for m, x in zip(mass, pieces)]) if self._uses_mass else None
            self._update_group(
                group, packing.constraint, packed, packing.pack(grads), packed_states,
                None if noise is None else packing.pack(noise), ctx, weight_decay=weight_decay, mass=mass,
            )
            packing.unpack_(packed, pieces)
            for k in keys:
                packing.unpack_([s[k] for s in packed_states], [s[k] for s in states])

    def _packing(self, constraint: Constraint, pieces: List[Tensor]):
        """How the group's tensors are packed for this step (the set decides; see ``Constraint.packing``)."""
        return constraint.packing(pieces)

    def _init_param_state(self, p: Tensor, constraint: Constraint, state: Dict[str, Any]) -> None:
        pass

    def _update_group(self, group, constraint, params, grads, states, noise, ctx: StepContext, *, weight_decay: float, mass=None) -> None:
        """The scheme's update of one group's lists, in place (``ctx``: the step's context).

        ``grads`` are the forces to use and ``weight_decay`` the decay to add to them: the group's
        own, or, with a preconditioner, the preconditioned forces and 0. ``mass``: the diagonal
        mass per tensor (broadcastable; ``None``: unit mass), for schemes whose equations read it."""
        raise NotImplementedError
