"""Saving and restoring an optimiser: ``state_dict``/``load_state_dict`` (constraints as specs, the
noise generators' states, the scheme that saved it) and ``copy``/``pickle`` support."""

from __future__ import annotations

from typing import Any, Dict, List, Tuple

from .. import distributed



class CheckpointMixin:
    """State dicts, copies and pickles for :class:`~constrained_sgld.optim.base.ConstrainedLangevinOptimizer`."""

    #: per-parameter state entries that are tangent vectors in the set's representation
    _tangent_state_keys: Tuple[str, ...] = ()

    def _state_keys_missing(self, state: Dict[Any, Dict[str, Any]]) -> List[str]:
        """The per-parameter state keys this scheme needs that a loaded state lacks."""
        return []

    def _upgrade_tangents(self, saved_versions: List[Any]) -> None:
        """Bring loaded tangent vectors saved in an older representation of their set into its
        current one (``Constraint.upgrade_tangent``)."""
        for group, version in zip(self.param_groups, saved_versions):
            constraint = group.get("constraint")
            if constraint is None or not self._tangent_state_keys or version == constraint.tangent_version:
                continue
            for p in group["params"]:
                state = self.state.get(p)
                for key in self._tangent_state_keys:
                    if state and key in state:
                        state[key] = constraint.upgrade_tangent(distributed.local(p.detach()), state[key], int(version), state)

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
        # a copied tensor's version counter starts again at 0: the recorded versions would make the
        # copy's first step see every parameter as changed from outside and re-derive set states
        # (the circle's partner z, whose sign would be lost), as after load_state_dict
        state["_versions"] = {}
        return state

    def __setstate__(self, state: Dict[str, Any]) -> None:
        super().__setstate__(state)
        self._noise_norms = {id(self.param_groups[i]): v for i, v in self._noise_norms.items()}
        self._rejected_moves = {id(self.param_groups[i]): v for i, v in self._rejected_moves.items()}

    def state_dict(self) -> Dict[str, Any]:
        sd = super().state_dict()
        for g in sd["param_groups"]:
            c = g.get("constraint")
            g["constraint"] = None if c is None else list(c.spec())
        generators = dict(self._pending_rng)  # loaded, not yet bound to a device: kept as loaded
        generators.update({k: g.get_state() for k, g in self._generators.items()})
        sd["rng"] = {"base_seed": self._base_seed, "chain_id": self._chain_id, "generators": generators}
        sd["scheme"] = type(self).__name__
        # what each group's momenta mean (a set may change its tangent representation: see
        # Constraint.tangent_version); a state saved without it is of version 1
        sd["tangent_versions"] = [None if g.get("constraint") is None else g["constraint"].tangent_version for g in self.param_groups]
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
        tangent_versions = sd.pop("tangent_versions", None) or [1] * len(saved_groups)
        super().load_state_dict(sd)
        self._versions = {}
        self._upgrade_tangents(tangent_versions)
        if rng is not None:
            self._base_seed = int(rng["base_seed"])
            self._chain_id = int(rng.get("chain_id", 0))
            # streams are bound to devices again on first use, in the same order as before
            self._generators, self._stream_keys = {}, {}
            self._pending_rng = dict(rng["generators"])
