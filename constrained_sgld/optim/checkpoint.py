"""Saving and restoring an optimiser: ``state_dict``/``load_state_dict`` (constraints as specs, the
noise generators' states, the scheme that saved it) and ``copy``/``pickle`` support."""

from __future__ import annotations

from collections import OrderedDict
from typing import Any, Dict, List, Tuple

from .. import distributed



def _packed_spec(constraint) -> List[Any]:
    """A set as saved: ``[name, options]``, or ``[name]`` without options (an empty dict inside a
    list is flattened differently by DCP's save and load, which then miss each other's key)."""
    name, options = constraint.spec()
    return [name, dict(options)] if options else [name]


class CheckpointMixin:
    """State dicts, copies and pickles for `ConstrainedLangevinOptimizer`."""

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
                    if isinstance(state, dict) and key in state:
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
        state["_step_lrs"] = {}  # the lrs read by a step: refilled by the next one
        return state

    def __setstate__(self, state: Dict[str, Any]) -> None:
        state.setdefault("_step_lrs", {})  # pickled by a version without it
        super().__setstate__(state)
        self._noise_norms = {id(self.param_groups[i]): v for i, v in self._noise_norms.items()}
        self._rejected_moves = {id(self.param_groups[i]): v for i, v in self._rejected_moves.items()}

    # -- state_dict: torch's two keys only
    #
    # Everything this package adds lives inside ``param_groups``, so that every tool that round-trips
    # ``state`` and ``param_groups`` alone (torch.distributed.checkpoint's get/set_optimizer_state_dict,
    # FSDP's optimizer state utilities) carries it: each group's set as a spec (``"constraint"``),
    # the version of its tangent representation (``"tangent_version"``) and the scheme that saved it
    # (``"scheme"``); the first group also carries the noise streams (``"rng"``). A state_dict of the
    # earlier layout (``rng``, ``scheme`` and ``tangent_versions`` as top-level keys) still loads.

    def _rng_record(self) -> Dict[str, Any]:
        """The noise streams: seed, chain and one generator state per stream. Every stream the
        parameters' devices will use is bound first, so that a fresh optimiser's state_dict already
        has the entries a checkpoint loads into (DCP loads in place into the keys it is given)."""
        for group in self.param_groups:
            for p in group["params"]:
                self._generator(distributed.local(p).device, distributed.shard_rank(p))
        generators = dict(self._pending_rng)  # loaded, not yet bound to a device: kept as loaded
        generators.update({k: g.get_state() for k, g in self._generators.items()})
        return {"base_seed": self._base_seed, "chain_id": self._chain_id, "generators": generators}

    def _pack_extras(self, sd: Dict[str, Any]) -> None:
        """Our entries, written into torch's packed ``param_groups`` (before the post-hooks see them)."""
        first = self.param_groups[0] if self.param_groups else None
        rng = None
        for packed, group in zip(sd["param_groups"], self.param_groups):
            c = group.get("constraint")
            packed["constraint"] = None if c is None else _packed_spec(c)
            # what the group's momenta mean (a set may change its tangent representation: see
            # Constraint.tangent_version); a state saved without it is of version 1
            packed["tangent_version"] = None if c is None else c.tangent_version
            packed["scheme"] = type(self).__name__
            # the first group carries the streams, and so does every repeat of it in param_groups
            # (torch's test_state_dict_deterministic, #36831: a repeated group packs identically)
            if group is first:
                rng = self._rng_record() if rng is None else rng
                packed["rng"] = rng

    def state_dict(self) -> Dict[str, Any]:
        """``{"state": ..., "param_groups": ...}``, as every ``torch.optim`` optimiser's; the noise
        streams, sets and scheme are inside ``param_groups`` (see above). State-dict pre- and
        post-hooks run as torch runs them, and the post-hooks see the dict this returns."""
        post_hooks = self._optimizer_state_dict_post_hooks
        self._optimizer_state_dict_post_hooks = OrderedDict()  # run below, on the finished dict
        try:
            sd = super().state_dict()  # the pre-hooks, then torch's packing
        finally:
            self._optimizer_state_dict_post_hooks = post_hooks
        self._pack_extras(sd)
        for hook in post_hooks.values():
            result = hook(self, sd)
            if result is not None:
                sd = result
        return sd

    def _scheme_mismatch(self, saved: Dict[str, Any], scheme: Any) -> str:
        """Why a saved group cannot be this scheme's ("" when it can): the recorded scheme, or,
        for a dict without one, the options that tell the schemes apart."""
        mine = type(self).__name__
        if scheme is not None:
            return "" if scheme == mine else f"was saved by {scheme}, not {mine}"
        telling = {"momentum", "thermostat_mass"}
        theirs, ours = telling & saved.keys(), telling & self.defaults.keys()
        if theirs != ours:
            return f"has options {sorted(theirs)} where {mine} has {sorted(ours)} (was it saved by another optimiser?)"
        return ""

    def _unpack_extras(self, sd: Dict[str, Any]):
        """torch's part of a loaded state_dict, and ours: (state_dict, rng record, tangent versions).
        Validates before anything is changed."""
        sd = dict(sd)
        legacy_scheme, rng, legacy_versions = sd.pop("scheme", None), sd.pop("rng", None), sd.pop("tangent_versions", None)
        if "param_groups" not in sd or "state" not in sd:
            raise ValueError(f"state_dict must have 'state' and 'param_groups' (torch.optim's layout), got keys {sorted(map(str, sd))}")
        saved_groups = [dict(g) for g in sd["param_groups"]]
        if len(saved_groups) != len(self.param_groups):
            raise ValueError(
                f"state_dict has {len(saved_groups)} parameter groups but this optimiser has "
                f"{len(self.param_groups)} (groups are split by constraint; build the optimiser the same way)"
            )
        versions: List[Any] = []
        for i, saved in enumerate(saved_groups):
            why = self._scheme_mismatch(saved, saved.pop("scheme", legacy_scheme))
            if why:
                raise ValueError(f"state_dict's group {i} {why}: its per-parameter state does not fit this scheme")
            versions.append(saved.pop("tangent_version") if "tangent_version" in saved else (legacy_versions or [1] * len(saved_groups))[i])
            if "rng" in saved:
                rng = saved.pop("rng")
        missing = self._state_keys_missing(sd["state"])
        if missing:
            raise ValueError(f"state_dict lacks {type(self).__name__}'s per-parameter state {missing} (was it saved by another optimiser?)")
        for i, (saved, ours) in enumerate(zip(saved_groups, self.param_groups)):
            mine = ours["constraint"]
            mine_spec = None if mine is None else list(mine.spec())
            theirs = saved.get("constraint")
            theirs = None if theirs is None else [theirs[0], dict(theirs[1]) if len(theirs) > 1 else {}]
            if theirs != mine_spec:
                raise ValueError(f"state_dict's group {i} has constraint {theirs!r} but this optimiser's has {mine_spec!r}")
            saved["constraint"] = mine
        sd["param_groups"] = saved_groups
        return sd, rng, versions

    def load_state_dict(self, state_dict: Dict[str, Any]) -> None:
        """Load a state_dict of this optimiser (this layout or the earlier one with top-level
        ``rng``/``scheme``/``tangent_versions``). Load pre-hooks run first, on a shallow copy, and
        may upgrade what they are given; post-hooks run last, after the noise streams and
        momenta are restored. A refused dict changes nothing."""
        sd = state_dict.copy()
        pre_hooks, post_hooks = self._optimizer_load_state_dict_pre_hooks, self._optimizer_load_state_dict_post_hooks
        for hook in pre_hooks.values():
            result = hook(self, sd)
            if result is not None:
                sd = result
        sd, rng, versions = self._unpack_extras(sd)
        self._optimizer_load_state_dict_pre_hooks, self._optimizer_load_state_dict_post_hooks = OrderedDict(), OrderedDict()
        try:
            super().load_state_dict(sd)
        finally:
            self._optimizer_load_state_dict_pre_hooks, self._optimizer_load_state_dict_post_hooks = pre_hooks, post_hooks
        self._versions = {}
        self._upgrade_tangents(versions)
        if rng is not None:
            self._base_seed = int(rng["base_seed"])
            self._chain_id = int(rng.get("chain_id", 0))
            # streams are bound to devices again on first use, in the same order as before
            self._generators, self._stream_keys = {}, {}
            self._pending_rng = dict(rng["generators"])
        self._after_load()
        for hook in post_hooks.values():
            hook(self)

    def _after_load(self) -> None:
        """A scheme's own fix-ups of loaded state, before the user's load post-hooks run."""
