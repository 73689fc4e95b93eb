"""Chain diagnostics: scalar summaries recorded per draw and per chain, handed to ArviZ for the
effective sample size (ESS) and the rank-normalised split R-hat (Vehtari et al. 2021).

A network's posterior has millions of coordinates; the usual practice for SG-MCMC is to diagnose a
few scalar functions of the draws instead: a held-out log-likelihood, and projections of the
weights onto fixed random directions. [`ChainTrace`][constrained_sgld.ChainTrace] records them beside a
[`SampleCollector`][constrained_sgld.SampleCollector] (call [`ChainTrace.record()`][constrained_sgld.ChainTrace.record] where the collector keeps
a sample); [`chain_diagnostics()`][constrained_sgld.chain_diagnostics] takes one trace per chain (seeds, processes, ``chain_id``)::

    traces = []
    for seed in range(4):
        ...  # train with ConstrainedSGNHT(..., seed=seed)
        trace = ChainTrace(model)
        for step in ...:
            optimizer.step()
            if collector.update():
                trace.record(test_loglik=test_log_likelihood(model))
        traces.append(trace)
    chain_diagnostics(traces)  # {"test_loglik": {"ess": ..., "rhat": ...}, "projection_0": ...}

ArviZ is an optional dependency (``pip install "constrained-sgld[diagnostics]"``); nothing here is
hand-written ESS or R-hat. Chains are cut to the shortest one's length. The random directions
depend on ``projection_seed`` only, so every chain projects onto the same directions.
"""

from __future__ import annotations

from typing import Any, Dict, Iterable, List, Mapping, Optional, Sequence, Union

import torch
from torch import Tensor, nn

__all__ = ["ChainTrace", "chain_diagnostics", "to_arviz"]


def _arviz():
    try:
        import warnings

        with warnings.catch_warnings():  # ArviZ 0.x announces its 1.0 refactor on import
            warnings.simplefilter("ignore", FutureWarning)
            import arviz
    except ImportError as e:
        raise ImportError(
            f"chain diagnostics need ArviZ ({e}): pip install arviz (or pip install \"constrained-sgld[diagnostics]\")"
        ) from None
    return arviz


class ChainTrace:
    """One chain's scalar summaries, one value per recorded draw.

    Args:
        model: the module (or an iterable of parameters) whose weights are projected.
        projections: the number of fixed random unit directions in weight space (0: none).
        projection_seed: seeds the directions (the same for every chain).
    """

    def __init__(self, model: Union[nn.Module, Iterable[Tensor]], projections: int = 4, projection_seed: int = 0):
        if not isinstance(projections, int) or isinstance(projections, bool) or projections < 0:
            raise ValueError(f"projections must be an int >= 0, got {projections!r}")
        params = model.parameters() if isinstance(model, nn.Module) else model
        self._params: List[Tensor] = list(params)
        self.projections = projections
        self.projection_seed = projection_seed
        self._directions: Optional[List[Tensor]] = None
        self.draws: Dict[str, List[float]] = {}

    def __len__(self) -> int:
        return max((len(v) for v in self.draws.values()), default=0)

    def _make_directions(self) -> List[Tensor]:
        """Per parameter, a ``(projections, numel)`` block of one set of unit directions (drawn on the
        CPU, so the directions are the same on every device)."""
        gen = torch.Generator().manual_seed(self.projection_seed)
        blocks = [torch.randn(self.projections, p.numel(), generator=gen, dtype=torch.float64) for p in self._params]
        norm = torch.sqrt(sum(b.square().sum(1) for b in blocks))  # one norm per direction over all weights
        return [(b / norm[:, None]).to(p.device, torch.promote_types(p.dtype, torch.float32)) for b, p in zip(blocks, self._params)]

    @torch.no_grad()
    def record(self, **scalars: Any) -> None:
        """Append one draw: the weights' projections (``projection_0``, ...) and ``scalars``
        (floats or 0-dim tensors, e.g. ``test_loglik=...``). Reads the values to the host."""
        if self.projections and self._params:
            if self._directions is None:
                self._directions = self._make_directions()
            total = sum(d.double() @ p.detach().reshape(-1).to(d.dtype).double() for d, p in zip(self._directions, self._params))
            for i, value in enumerate(total.tolist()):
                self.draws.setdefault(f"projection_{i}", []).append(float(value))
        for name, value in scalars.items():
            self.draws.setdefault(name, []).append(float(value.item() if isinstance(value, Tensor) else value))

    def state_dict(self) -> Dict[str, Any]:
        return {"projections": self.projections, "projection_seed": self.projection_seed, "draws": {k: list(v) for k, v in self.draws.items()}}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.projections = int(state["projections"])
        self.projection_seed = int(state["projection_seed"])
        self._directions = None
        self.draws = {k: [float(x) for x in v] for k, v in state["draws"].items()}


Traces = Sequence[Union[ChainTrace, Mapping[str, Sequence[float]]]]


def _stacked(traces: Traces) -> Dict[str, Any]:
    """``{name: array (chain, draw)}`` over the names every chain has, cut to the shortest chain."""
    import numpy as np

    draws = [t.draws if isinstance(t, ChainTrace) else t for t in traces]
    if not draws:
        raise ValueError("chain diagnostics need at least one chain")
    names = [n for n in draws[0] if all(n in d for d in draws)]
    out = {}
    for name in names:
        length = min(len(d[name]) for d in draws)
        out[name] = np.array([list(d[name])[:length] for d in draws], dtype=float)
    return out


def chain_diagnostics(traces: Traces, min_draws: int = 4) -> Dict[str, Dict[str, float]]:
    """Bulk ESS and rank-normalised split R-hat (ArviZ) of each recorded summary, over the chains
    given (``ChainTrace`` objects, or their ``draws`` dicts). ``rhat`` is NaN with a single chain
    (R-hat compares chains); a summary with fewer than ``min_draws`` draws per chain is left out."""
    az = _arviz()
    out: Dict[str, Dict[str, float]] = {}
    for name, values in _stacked(traces).items():
        chains, draws = values.shape
        if draws < min_draws:
            continue
        ess = float(az.ess(values, method="bulk"))
        rhat = float(az.rhat(values)) if chains >= 2 else float("nan")
        out[name] = {"ess": ess, "rhat": rhat, "chains": chains, "draws": draws}
    return out


def to_arviz(traces: Traces):
    """The summaries as ArviZ data (an ``InferenceData`` under ArviZ 0.x, a ``DataTree`` under 1.x),
    one posterior variable per summary with dims ``(chain, draw)``."""
    az = _arviz()
    arrays = _stacked(traces)
    if int(az.__version__.split(".")[0]) >= 1:
        return az.from_dict({"posterior": arrays})
    return az.from_dict(posterior=arrays)
