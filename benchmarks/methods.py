"""Training methods by name: each builds an optimiser (and, for geotorch, a parametrisation) for a task.

Every method reads its hyper-parameters from the task (``task.hp``) and returns the exact values it
used, which the runner records. The constrained methods take the layers and sets from
``task.constrained(model, family)``; ``geotorch-orthogonal`` parametrises the same layers.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable, Dict, Optional, Tuple

import torch
from torch import nn
from torch.nn.utils import parametrize

from constrained_sgld import ConstrainedSGLD, ConstrainedSGNHT, ConstrainedUnderdampedSGLD, Orthogonal, make_constraint

# (optimiser, the hyper-parameters it used, parameter name -> constraint spec it enforces)
Built = Tuple[torch.optim.Optimizer, Dict[str, Any], Dict[str, Any]]


def _importable(path: str) -> bool:
    """Whether ``path`` (a module, or a module's attribute such as ``torch.optim.Muon``) exists."""
    import importlib
    import importlib.util

    parts = path.split(".")
    for cut in range(len(parts), 0, -1):
        module = ".".join(parts[:cut])
        try:
            if importlib.util.find_spec(module) is None:
                continue
            obj = importlib.import_module(module)
        except (ImportError, ValueError):
            continue
        for attr in parts[cut:]:
            if not hasattr(obj, attr):
                return False
            obj = getattr(obj, attr)
        return True
    return False


@dataclass(frozen=True)
class Method:
    name: str
    description: str
    family: Optional[str]  # the constraint family it needs from the task, or None
    build: Callable[[nn.Module, Any, int], Built]
    variant: Optional[str] = None  # the model variant it trains (an LSTM baseline), or the task's model
    needs: Tuple[str, ...] = ()  # hyper-parameters it reads that not every task defines
    members: int = 1  # a deep ensemble of this many of the task's models (benchmarks.ensemble)
    # "swag": the SWAG posterior over its iterates (benchmarks.swag); "laplace": the last-layer
    # Laplace approximation at the final weights (benchmarks.laplace)
    posterior: Optional[str] = None
    requires: Tuple[str, ...] = ()  # optional packages it imports (module, pip name), as "module:pip-name"
    # cSG-MCMC: CyclicalLR in place of the task's schedule, snapshots at each cycle's end, and the
    # task's ``chains`` independent chains pooled (trained as one DeepEnsemble: each chain its own
    # init, batch order and noise)
    cyclical: bool = False
    # ensemble-started chains (MILE's recipe): the ``members`` trained at T = 0 for all but the
    # task's last ``sample_epochs`` epochs, then each sampled on its own chain at this hyper-parameter's
    # lr (constrained_sgld.OptimiseThenSample); snapshots over the sampling stage's second half
    sample_lr_key: Optional[str] = None

    def models(self, task) -> int:
        """How many models one run trains: a cyclical method's chains (the task's ``chains``), an
        ensemble's members (the task's ``members`` where it sets them, as the transformer does for
        its cost, else the method's), else 1."""
        if self.cyclical:
            return int(task.hp.get("chains", 4))
        return int(task.hp.get("members", self.members)) if self.members > 1 else 1

    def missing(self) -> Tuple[str, ...]:
        """What to install for the requirements that are not met: each ``requires`` entry is
        ``"module:pip-name"`` or ``"module.attribute:what-provides-it"`` (``torch.optim.Muon``
        exists from torch 2.9 on)."""
        return tuple(r.split(":", 1)[1] for r in self.requires if not _importable(r.split(":", 1)[0]))

    def applies_to(self, task) -> bool:
        from .tasks.base import ClassificationTask

        family_ok = self.family is None or self.family in task.families
        variant_ok = self.variant is None or self.variant in task.variants
        # an ensemble trains on ClassificationTask's tensor batches, concatenated per member
        # and is evaluated by its shared evaluation (a task that reads its model's layers cannot);
        # the last-layer Laplace needs the same: a plain classifier of (batch, classes) logits
        plain = all(getattr(type(task), f) is getattr(ClassificationTask, f) for f in ("loss", "batches", "evaluate"))
        ensemble_ok = (self.members == 1 and not self.cyclical) or plain or task.ensembles
        laplace_ok = self.posterior != "laplace" or (plain and hasattr(task, "evaluate_posterior"))
        chains_ok = self.sample_lr_key is None or 0 < int(task.hp.get("sample_epochs", 0)) < task.epochs
        return family_ok and variant_ok and ensemble_ok and laplace_ok and chains_ok and all(k in task.hp for k in self.needs) and not self.missing()


def _sgd(model, task, seed):
    hp = {"lr": task.hp["lr"]}
    return torch.optim.SGD(model.parameters(), **hp), hp, {}


def _sgd_momentum(model, task, seed):
    hp = {"lr": task.hp["momentum_lr"], "momentum": task.hp["momentum"]}
    return torch.optim.SGD(model.parameters(), **hp), hp, {}


def _sgd_wd(model, task, seed):
    hp = {"lr": task.hp["momentum_lr"], "momentum": task.hp["momentum"], "weight_decay": task.hp["weight_decay"]}
    return torch.optim.SGD(model.parameters(), **hp), hp, {}


def _adam(model, task, seed):
    hp = {"lr": task.hp["adam_lr"]}
    return torch.optim.Adam(model.parameters(), **hp), hp, {}


def _rmsprop(model, task, seed):
    hp = {"lr": task.hp["rmsprop_lr"]}
    return torch.optim.RMSprop(model.parameters(), **hp), hp, {}


def _lstm_rmsprop(model, task, seed):
    # the task built its LSTM variant (matched parameter count); RMSprop on every parameter (expRNN's baseline)
    hp = {"lr": task.hp["lstm_lr"], "hidden": model.rnn.hidden_size, "parameters": sum(p.numel() for p in model.parameters())}
    return torch.optim.RMSprop(model.parameters(), lr=hp["lr"]), hp, {}


def _sgd_momentum_orth_init(model, task, seed):
    # the orthogonal layers start where o-cola-* start, then move freely: tells the init's effect from the constraint's
    start_on_set(model, task.constrained(model, "orthogonal"))
    optim, hp, _ = _sgd_momentum(model, task, seed)
    return optim, dict(hp, init="orthogonal (as o-cola-*), unconstrained"), {}


def _ud_hparams(task) -> Dict[str, Any]:
    return {"lr": task.hp["ud_lr"], "momentum": task.hp["ud_momentum"], "temperature": task.hp["temperature"]}


def _sgld(model, task, seed):
    # the same Langevin dynamics as *-cola-ud, with no constraint: isolates what the constraint does
    hp = _ud_hparams(task)
    return ConstrainedUnderdampedSGLD(model.named_parameters(), seed=seed, **hp), hp, {}


def _sgld_od(model, task, seed):
    # Welling & Teh's SGLD: the overdamped dynamics of *-cola-od with no constraint
    hp = {"lr": task.hp["od_lr"], "temperature": task.hp["temperature"]}
    return ConstrainedSGLD(model.named_parameters(), seed=seed, **hp), hp, {}


def start_on_set(model: nn.Module, constraints: Dict[str, Any]) -> None:
    """Weights the model already started on their set keep that start (a task's own init, such as
    the RNN tasks' Henaff rotations); otherwise orthogonal weights start Haar-distributed (the papers'
    orthogonal init), and other sets keep PyTorch's default init, projected onto the set."""
    params = dict(model.named_parameters())
    with torch.no_grad():
        for name, spec in constraints.items():
            c = make_constraint(spec, where=name)
            if c.violation(params[name]) <= c.tolerance(params[name].dtype):
                continue
            if isinstance(c, Orthogonal):
                c.init_(params[name])
            else:
                params[name].copy_(c.project(params[name]))


def _constrained(family: Optional[str], underdamped: bool, thermostat: bool = False, lr_key: str = "ud_lr", temperature_key: str = "temperature"):
    """A scheme on ``family``'s sets (``None``: no set, plain SGLD); the underdamped schemes read
    ``lr_key`` and ``temperature_key`` (a method's own tuned values) besides ``ud_momentum``."""

    def build(model, task, seed):
        constraints = task.constrained(model, family) if family else {}
        start_on_set(model, constraints)
        if thermostat:  # the same lr, momentum (the noise's friction) and temperature as *-cola-ud
            hp = _ud_hparams(task)
            optim = ConstrainedSGNHT(model.named_parameters(), constraints=constraints, seed=seed, **hp)
        elif underdamped:
            hp = {"lr": task.hp[lr_key], "momentum": task.hp["ud_momentum"], "temperature": task.hp[temperature_key]}
            optim = ConstrainedUnderdampedSGLD(model.named_parameters(), constraints=constraints, seed=seed, **hp)
        else:
            hp = {"lr": task.hp["od_lr"], "temperature": task.hp["temperature"]}
            optim = ConstrainedSGLD(model.named_parameters(), constraints=constraints, seed=seed, **hp)
        if constraints:
            hp["constraints"] = {k: _spec_text(v) for k, v in constraints.items()}
        return optim, hp, constraints

    return build


def _ivon(model, task, seed):
    """IVON (Shen et al. 2024; ``ivon-opt``): the effective sample size is the training set's size
    (the Bayesian posterior), one weight sample per step (the runner draws it around the forward
    and backward pass through ``sampled_params``)."""
    import ivon

    hp = {
        "lr": task.hp["ivon_lr"], "ess": len(task.y_train), "hess_init": task.hp["ivon_hess_init"],
        "weight_decay": task.hp["ivon_weight_decay"], "clip_radius": task.hp["ivon_clip_radius"], "beta1": 0.9, "beta2": 0.99999, "mc_samples": 1,
    }
    return ivon.IVON(model.parameters(), **hp), hp, {}


def _preconditioned(family: Optional[str], underdamped: bool = False, lr_key: str = "precond_lr", temperature_key: str = "temperature",
                    options: Optional[Dict[str, Any]] = None):
    """A scheme with the adaptive mass (``preconditioner=``, RMSprop's form), on ``family``'s sets
    (``None``: no set, pSGLD). The constrained weights take ``precond_lr * precond_constrained_lr_factor``
    (expRNN's advice for RNNs: the orthogonal lr 10x smaller), the rest ``precond_lr``; ``lr_key``
    names a task's own lr for the method where its grid chose another (``precond_lr`` where the task
    has none). At T = 0 and
    off the set the overdamped scheme is RMSprop with that lr, the underdamped one RMSprop with
    momentum ``ud_momentum`` (its lr then ``precond_lr * (1 - momentum)``: the same effective step).
    ``temperature_key`` names the task's temperature for the method (a tempered twin of a T = 0
    method). ``options``: preconditioner options over the task's (an ablation's one change)."""

    def build(model, task, seed):
        constraints = task.constrained(model, family) if family else {}
        start_on_set(model, constraints)
        lr = task.hp.get(lr_key, task.hp["precond_lr"])
        factor = task.hp["precond_constrained_lr_factor"] if constraints else 1.0
        kwargs: Dict[str, Any] = {}
        if underdamped:
            kwargs["momentum"] = task.hp["ud_momentum"]
            lr = lr * (1 - kwargs["momentum"])
        named = list(model.named_parameters())
        on = [(n, p) for n, p in named if n in constraints]
        off = [(n, p) for n, p in named if n not in constraints]
        groups = ([{"params": off}] if off else []) + ([{"params": on, "lr": lr * factor}] if on else [])
        preconditioner = {"alpha": task.hp["precond_alpha"], "eps": task.hp["precond_eps"], "adapt_steps": task.hp["precond_adapt_steps"], **(options or {})}
        cls = ConstrainedUnderdampedSGLD if underdamped else ConstrainedSGLD
        temperature = task.hp[temperature_key]
        optim = cls(groups, lr=lr, constraints=constraints, temperature=temperature, preconditioner=preconditioner, seed=seed, **kwargs)
        hp = dict(lr=lr, temperature=temperature, preconditioner=preconditioner, **kwargs)
        if constraints:
            hp.update(constrained_lr=lr * factor, constraints={k: _spec_text(v) for k, v in constraints.items()})
        return optim, hp, constraints

    return build


def projecting(optimizer_cls):
    """``optimizer_cls`` that maps chosen parameters back onto their set with the set's ``project``
    after every step: projected SGD, the usual way to keep weights non-negative (input-convex nets),
    in [-1, 1] (BinaryConnect, Courbariaux et al. 2015, clips its weights) or under a max-norm
    (Srivastava et al. 2014 renormalise each unit's incoming weights). A projection with no regard
    for the dynamics: the momentum keeps pushing into the wall."""

    class Projected(optimizer_cls):
        def __init__(self, params, projected: Dict[torch.Tensor, Any], **kwargs):
            super().__init__(params, **kwargs)
            self.projected = list(projected.items())

        @torch.no_grad()
        def step(self, closure=None):
            loss = super().step(closure)
            for p, constraint in self.projected:
                p.copy_(constraint.project(p))
            return loss

    Projected.__name__ = Projected.__qualname__ = f"Projected{optimizer_cls.__name__}"
    return Projected


ProjectedSGD = projecting(torch.optim.SGD)
ProjectedAdam = projecting(torch.optim.Adam)


def _projected(family: str, adam: bool = False, lr_key: Optional[str] = None):
    """SGD-momentum (or Adam) on every parameter, ``family``'s weights projected after each step;
    ``lr_key`` names the task's lr for the method (default ``adam_lr`` or ``momentum_lr``)."""

    def build(model, task, seed):
        constraints = task.constrained(model, family)
        start_on_set(model, constraints)
        params = dict(model.named_parameters())
        sets = {params[name]: make_constraint(spec, where=name) for name, spec in constraints.items()}
        lr = task.hp[lr_key or ("adam_lr" if adam else "momentum_lr")]
        hp = {"lr": lr} if adam else {"lr": lr, "momentum": task.hp["momentum"]}
        optim = (ProjectedAdam if adam else ProjectedSGD)(model.parameters(), sets, **hp)
        return optim, dict(hp, projected_after_step={k: _spec_text(v) for k, v in constraints.items()}), constraints

    return build


def _weight_norm(model, task, seed):
    """``torch.nn.utils.parametrizations.weight_norm`` (Salimans & Kingma 2016) on the layers the
    sphere family names, SGD-momentum on everything: each unit's incoming weights are ``g v / |v|``
    with a learned norm ``g``, where the sphere fixes it."""
    from torch.nn.utils.parametrizations import weight_norm

    constraints = task.constrained(model, "sphere")
    for name in constraints:
        owner, _, attr = name.rpartition(".")
        weight_norm(model.get_submodule(owner), attr, dim=0)  # g starts at each row's norm: the same function
    hp = {"lr": task.hp["momentum_lr"], "momentum": task.hp["momentum"]}
    optim = torch.optim.SGD(model.parameters(), **hp)
    return optim, dict(hp, weight_norm=sorted(constraints)), {}


def _nonnegative_icnn(model, task, seed):
    """ConstrainedSGLD on the non-negative weights, started from the ICNN initialisation."""
    from constrained_sgld.init import icnn_

    constraints = task.constrained(model, "nonnegative")
    params = dict(model.named_parameters())
    for name in constraints:
        bias = params.get(name[: -len("weight")] + "bias")
        icnn_(params[name], bias)
    optim, hp, constraints = _constrained("nonnegative", False)(model, task, seed)
    return optim, dict(hp, init="icnn_"), constraints


def _spec_text(spec) -> str:
    c = make_constraint(spec)
    name, kwargs = c.spec()
    return name + ("(" + ", ".join(f"{k}={v:g}" if isinstance(v, float) else f"{k}={v}" for k, v in kwargs.items()) + ")" if kwargs else "")


class FlatOrthogonal(nn.Module):
    """geotorch's Stiefel parametrisation of a weight viewed as a matrix ``(out, in * prod(kernel))``,
    reshaped back: the same set our ``orthogonal`` constraint uses (geotorch alone would make every
    kernel slice orthogonal). ``scale`` multiplies the orthonormal matrix; ``blocks`` splits the rows
    into that many matrices, each orthogonal (our set's ``blocks``: a fused query-key-value weight),
    through geotorch's batch of matrices."""

    def __init__(self, shape: torch.Size, scale: float = 1.0, blocks: int = 1):
        super().__init__()
        import geotorch

        self.shape, self.scale, self.blocks = tuple(shape), scale, blocks
        self.stiefel = geotorch.Stiefel(size=self._size())

    def _size(self):
        rows, cols = self.shape[0] // self.blocks, math.prod(self.shape[1:])
        return (rows, cols) if self.blocks == 1 else (self.blocks, rows, cols)

    def forward(self, x):
        return (self.scale * self.stiefel(x)).reshape(self.shape)

    def right_inverse(self, w):
        return self.stiefel.right_inverse(w.reshape(self._size()) / self.scale)


def parametrize_orthogonal(model: nn.Module, constraints: Dict[str, Any]) -> None:
    """geotorch's orthogonal parametrisation of the ``constraints``' weights (scale and blocks as
    our sets'), started from the same Haar point as o-cola-*."""
    start_on_set(model, constraints)
    modules = dict(model.named_modules())
    for name, spec in constraints.items():
        owner, _, attr = name.rpartition(".")
        module = modules[owner]
        c = make_constraint(spec)
        parametrize.register_parametrization(module, attr, FlatOrthogonal(getattr(module, attr).shape, c.scale, c.blocks))


def _geotorch(model, task, seed):
    constraints = task.constrained(model, "orthogonal")
    parametrize_orthogonal(model, constraints)
    if task.hp.get("geotorch_optimizer", "sgd-momentum") == "rmsprop":
        # expRNN's recipe: RMSprop, the orthogonal parametrisation's lr `orthogonal_lr_factor` times the rest
        orthogonal = [p for n, p in model.named_parameters() if ".parametrizations." in f".{n}"]
        ids = {id(p) for p in orthogonal}
        rest = [p for p in model.parameters() if id(p) not in ids]
        hp = {"optimizer": "rmsprop", "lr": task.hp["rmsprop_lr"], "orthogonal_lr": task.hp["rmsprop_lr"] * task.hp["orthogonal_lr_factor"]}
        optim = torch.optim.RMSprop([{"params": rest}, {"params": orthogonal, "lr": hp["orthogonal_lr"]}], lr=hp["lr"])
    else:
        hp = {"lr": task.hp["momentum_lr"], "momentum": task.hp["momentum"]}
        optim = torch.optim.SGD(model.parameters(), **hp)
    return optim, dict(hp, parametrized={k: _spec_text(v) for k, v in constraints.items()}), constraints


# ---------------------------------------------------------------------------- transformers
def _decayed(params):
    """nanoGPT's weight-decay split: matrices and embeddings decay, LayerNorm weights and scales
    (vectors) do not."""
    params = list(params)
    return [p for p in params if p.ndim >= 2], [p for p in params if p.ndim < 2]


def _adamw_groups(params, task, lr_key: str = "adamw_lr"):
    decay, rest = _decayed(params)
    groups = [{"params": decay, "weight_decay": task.hp["adamw_wd"]}] + ([{"params": rest, "weight_decay": 0.0}] if rest else [])
    hp = {"lr": task.hp[lr_key], "betas": tuple(task.hp["adamw_betas"]), "weight_decay": task.hp["adamw_wd"], "weight_decay_on": "matrices and embeddings"}
    return torch.optim.AdamW(groups, lr=hp["lr"], betas=hp["betas"]), hp


def _adamw(model, task, seed):
    optim, hp = _adamw_groups(model.parameters(), task)
    return optim, hp, {}


class ChainedOptimizer(torch.optim.Optimizer):
    """Several optimisers over disjoint parameters, stepped together as one (torch's Muon docs:
    Muon for the hidden matrices, AdamW for the rest). ``param_groups`` are the members' own group
    dicts, so a scheduler's lr changes reach them; ``state_dict`` holds each member's."""

    def __init__(self, *optimizers: torch.optim.Optimizer):
        self.optimizers = optimizers
        super().__init__([p for o in optimizers for g in o.param_groups for p in g["params"]], {})
        self.param_groups = [g for o in optimizers for g in o.param_groups]

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for o in self.optimizers:
            o.step()
        return loss

    def state_dict(self):
        return {"optimizers": [o.state_dict() for o in self.optimizers]}

    def load_state_dict(self, state_dict):
        for o, s in zip(self.optimizers, state_dict["optimizers"]):
            o.load_state_dict(s)


def _muon(model, task, seed):
    """``torch.optim.Muon`` (its defaults) on the attention and MLP matrices (the orthogonal family's
    weights), AdamW on the embeddings and LayerNorms."""
    matrices = task.constrained(model, "orthogonal")
    named = dict(model.named_parameters())
    hidden = [named[n] for n in matrices]
    rest = [p for n, p in named.items() if n not in matrices]
    muon = torch.optim.Muon(hidden, lr=task.hp["muon_lr"], weight_decay=task.hp["adamw_wd"])
    adamw, hp = _adamw_groups(rest, task)
    hp = {"muon_lr": task.hp["muon_lr"], "muon_weight_decay": task.hp["adamw_wd"], "muon_on": sorted(matrices), "adamw_on_the_rest": hp}
    return ChainedOptimizer(muon, adamw), hp, {}


def _geometric(family: str, kind: str, variant: str = "steepest", lr_key: str = "spectral_lr", per_entry: bool = True, decay: bool = True,
               rest_lr_key: Optional[str] = None):
    """One `ConstrainedSGLD` at T = 0 with the optimiser-only preconditioner kinds: ``family``'s
    weights take ``kind`` (``"spectral"``: the spectral step, ``variant``; ``"adam"``: Adam's
    moments, ``per_entry`` or one second moment per block) at ``lr_key``'s lr, projected and
    retracted by their sets; every other parameter takes the Adam kind (the task's AdamW betas),
    with decoupled weight decay ``adamw_wd`` on the unconstrained matrices and embeddings where
    ``decay`` (nanoGPT's split; Muon's recipe), none otherwise (nGPT's). The rest's lr:
    ``rest_lr_key``'s, else ``adamw_lr`` with decay and ``lr_key``'s without."""

    def build(model, task, seed):
        constraints = task.constrained(model, family)
        start_on_set(model, constraints)
        betas = tuple(task.hp["adamw_betas"]) if decay else (0.9, 0.999)
        adam = {"kind": "adam", "betas": betas, "decoupled_weight_decay": True}
        if kind == "spectral":
            on_spec = {"kind": "spectral", "variant": variant}
        else:
            on_spec = dict(adam, per_entry=per_entry)
        named = list(model.named_parameters())
        on = [(n, p) for n, p in named if n in constraints]
        off = [(n, p) for n, p in named if n not in constraints]
        wd = task.hp["adamw_wd"] if decay else 0.0
        decayed, rest = [(n, p) for n, p in off if p.ndim >= 2], [(n, p) for n, p in off if p.ndim < 2]
        rest_lr = task.hp[rest_lr_key] if rest_lr_key else task.hp["adamw_lr"] if decay else task.hp[lr_key]
        groups = [{"params": on, "preconditioner": on_spec, "lr": task.hp[lr_key], "weight_decay": 0.0}]
        groups += [{"params": g, "preconditioner": adam, "lr": rest_lr, "weight_decay": w} for g, w in ((decayed, wd), (rest, 0.0)) if g]
        optim = ConstrainedSGLD(groups, lr=rest_lr, constraints=constraints, seed=seed)
        hp = {"constrained_lr": task.hp[lr_key], "constrained_preconditioner": on_spec, "lr_of_the_rest": rest_lr,
              "preconditioner_of_the_rest": adam, "weight_decay_of_unconstrained_matrices": wd, "temperature": 0.0,
              "constraints": {k: _spec_text(v) for k, v in constraints.items()}}
        return optim, hp, constraints

    return build


ProjectedConstrainedSGLD = projecting(ConstrainedSGLD)


def _ngpt_muon(model, task, seed):
    """The control of ``ngpt-s-spectral``: the same steps (Muon's momentum and matrix sign on the
    sphere family's matrices, through the spectral kind without a set; the Adam kind on the rest),
    taken in the ambient space and then renormalised (nGPT's recipe with Muon in Adam's place),
    where ``ngpt-s-spectral`` projects them on the tangent space and moves along the sphere."""
    constraints = task.constrained(model, "sphere")
    start_on_set(model, constraints)
    named = list(model.named_parameters())
    sets = {p: make_constraint(constraints[n], where=n) for n, p in named if n in constraints}
    on = [(n, p) for n, p in named if n in constraints]
    off = [(n, p) for n, p in named if n not in constraints]
    spectral = {"kind": "spectral", "variant": "project"}
    adam = {"kind": "adam", "betas": (0.9, 0.999), "decoupled_weight_decay": True}
    groups = [{"params": on, "preconditioner": spectral, "lr": task.hp["ngpt_spectral_lr"]},
              {"params": off, "preconditioner": adam, "lr": task.hp["ngpt_adam_lr"]}]
    optim = ProjectedConstrainedSGLD(groups, sets, lr=task.hp["ngpt_adam_lr"], seed=seed)
    hp = {"matrices_lr": task.hp["ngpt_spectral_lr"], "matrices_preconditioner": spectral, "lr_of_the_rest": task.hp["ngpt_adam_lr"],
          "preconditioner_of_the_rest": adam, "temperature": 0.0, "projected_after_step": {k: _spec_text(v) for k, v in constraints.items()}}
    return optim, hp, constraints


def _geotorch_adamw(model, task, seed):
    """geotorch's orthogonal parametrisation of the orthogonal family's weights (blocks as ours),
    AdamW on everything (no weight decay on the parametrised weights: their norm is fixed)."""
    constraints = task.constrained(model, "orthogonal")
    parametrize_orthogonal(model, constraints)
    orthogonal = [p for n, p in model.named_parameters() if ".parametrizations." in f".{n}"]
    ids = {id(p) for p in orthogonal}
    optim, hp = _adamw_groups([p for p in model.parameters() if id(p) not in ids], task, "geotorch_lr")
    optim.add_param_group({"params": orthogonal, "weight_decay": 0.0})
    return optim, dict(hp, parametrized={k: _spec_text(v) for k, v in constraints.items()}), constraints


METHODS: Dict[str, Method] = {
    m.name: m
    for m in [
        Method("sgd", "plain SGD", None, _sgd),
        Method("sgd-momentum", "SGD with heavy-ball momentum", None, _sgd_momentum),
        Method("ensemble-sgd-momentum", "a deep ensemble of 5 SGD-momentum nets (independent inits and batch orders; 5x the cost), their averaged prediction", None, _sgd_momentum, members=5),
        Method("swag", "SWAG (Maddox et al. 2019): SGD-momentum, the low-rank plus diagonal Gaussian of its iterates over the second half, 30 draws averaged", None, _sgd_momentum, posterior="swag"),
        Method(
            "laplace",
            "last-layer Laplace (Daxberger et al. 2021, through laplace-torch): SGD-momentum with weight decay as the MAP, a Kronecker-factored Gaussian over the last layer, prior precision by marginal likelihood, the predictive averaged over 100 last-layer draws",
            None, _sgd_wd, posterior="laplace", requires=("laplace:laplace-torch",),
        ),
        Method("adam", "Adam", None, _adam),
        # the posterior round (fmnist-cnn)
        Method("ivon", "IVON (Shen et al. 2024, ivon-opt): a diagonal Gaussian posterior learned by variational online Newton; its prediction averages 20 weight draws", None, _ivon, posterior="ivon", needs=("ivon_lr",), requires=("ivon:ivon-opt",)),
        Method("mc-dropout", "MC dropout (Gal & Ghahramani 2016): the task's dropout model, SGD-momentum; the prediction averages 20 passes with dropout on", None, _sgd_momentum, variant="dropout", posterior="mc-dropout"),
        Method("sgld-cyclical", "cyclical underdamped SGLD (cSGHMC, Zhang et al. 2020), no constraint: the task's chains pooled, snapshots at each cycle's end", None, _constrained(None, True, lr_key="sgld_cyclical_lr", temperature_key="sgld_cyclical_temperature"), needs=("sgld_cyclical_lr", "chains"), cyclical=True),
        Method("o-cola-ud-cyclical", "cyclical ConstrainedUnderdampedSGLD, orthogonal hidden layers: the task's chains pooled", "orthogonal", _constrained("orthogonal", True, lr_key="o_cyclical_lr", temperature_key="o_cyclical_temperature"), needs=("o_cyclical_lr", "chains"), cyclical=True),
        Method("o-cola-ud-rms-cyclical", "cyclical ConstrainedUnderdampedSGLD with the adaptive mass, orthogonal hidden layers: the task's chains pooled", "orthogonal", _preconditioned("orthogonal", True, lr_key="o_rms_cyclical_lr", temperature_key="o_rms_cyclical_temperature"), needs=("o_rms_cyclical_lr", "chains"), cyclical=True),
        # ensemble-started chains (MILE, Sommer et al. ICLR 2025): the 5-member ensemble's cost
        Method(
            "ens-sgld", "5 SGD-momentum members (the underdamped scheme at T = 0) for all but the last sample_epochs, then each sampled by underdamped SGLD on its own chain; the chains' snapshots pooled",
            None, _constrained(None, True, temperature_key="ens_temperature"), needs=("ens_sample_lr", "ens_temperature", "sample_epochs"), members=5, sample_lr_key="ens_sample_lr",
        ),
        Method(
            "ens-o-cola-ud", "5 members on the orthogonal set (ConstrainedUnderdampedSGLD at T = 0: SGD-momentum on the set) for all but the last sample_epochs, then each sampled on its own chain; the chains' snapshots pooled",
            "orthogonal", _constrained("orthogonal", True, temperature_key="ens_o_temperature"), needs=("ens_o_sample_lr", "ens_o_temperature", "sample_epochs"), members=5, sample_lr_key="ens_o_sample_lr",
        ),
        # the transformer's posterior: chains started from converged MAP runs of o-cola-ud-rms (the
        # task's warm-up and cosine over the optimisation stage), against its deep ensemble
        Method(
            "ensemble-o-cola-ud-rms", "a deep ensemble of o-cola-ud-rms nets (the task's members, else 5; independent inits and batch orders), their averaged prediction",
            "orthogonal", _preconditioned("orthogonal", True), needs=("precond_lr",), members=5,
        ),
        Method(
            "map-o-cola-ud-rms", "o-cola-ud-rms to a MAP (T = 0, the task's schedule) for all but the last sample_epochs, then one chain from it with the adaptive mass; its snapshots averaged",
            "orthogonal", _preconditioned("orthogonal", True, temperature_key="map_temperature"), needs=("precond_lr", "map_sample_lr", "map_temperature", "sample_epochs"),
            sample_lr_key="map_sample_lr",
        ),
        Method(
            "ens-o-cola-ud-rms", "map-o-cola-ud-rms from each member of ensemble-o-cola-ud-rms (the same members and cost): a chain per member, the snapshots pooled",
            "orthogonal", _preconditioned("orthogonal", True, temperature_key="map_temperature"), needs=("precond_lr", "map_sample_lr", "map_temperature", "sample_epochs"),
            members=5, sample_lr_key="map_sample_lr",
        ),
        Method("rmsprop", "RMSprop", None, _rmsprop, needs=("rmsprop_lr",)),
        Method("sgd-wd", "SGD-momentum with weight decay", None, _sgd_wd),
        Method("sgld", "underdamped Langevin, no constraint, the same lr/momentum/temperature as *-cola-ud", None, _sgld),
        Method("sgld-od", "overdamped Langevin (textbook SGLD), no constraint, the same lr/temperature as *-cola-od", None, _sgld_od),
        Method("c-cola-od", "ConstrainedSGLD, circle constraints", "circle", _constrained("circle", False)),
        Method("c-cola-ud", "ConstrainedUnderdampedSGLD, circle constraints", "circle", _constrained("circle", True)),
        Method("c-cola-nht", "ConstrainedSGNHT (adaptive thermostat), circle constraints", "circle", _constrained("circle", True, thermostat=True)),
        Method("o-cola-od", "ConstrainedSGLD, orthogonal constraints", "orthogonal", _constrained("orthogonal", False)),
        Method("o-cola-ud", "ConstrainedUnderdampedSGLD, orthogonal constraints", "orthogonal", _constrained("orthogonal", True)),
        Method("o-cola-nht", "ConstrainedSGNHT (adaptive thermostat), orthogonal constraints", "orthogonal", _constrained("orthogonal", True, thermostat=True)),
        Method("b-cola-od", "ConstrainedSGLD, box constraints (binary-weight means)", "box", _constrained("box", False)),
        Method("b-cola-ud", "ConstrainedUnderdampedSGLD, box constraints (binary-weight means)", "box", _constrained("box", True)),
        Method("sgd-momentum-clip", "SGD-momentum, box weights clipped after every step (BinaryConnect-style)", "box", _projected("box")),
        Method("adam-clip", "Adam, box weights clipped after every step", "box", _projected("box", adam=True)),
        Method("sgd-clamp", "SGD-momentum, non-negative weights clamped after every step", "nonnegative", _projected("nonnegative")),
        Method("s-cola-od", "ConstrainedSGLD, each unit's incoming weights on a sphere (weight normalisation as a hard constraint)", "sphere", _constrained("sphere", False)),
        Method("s-cola-ud", "ConstrainedUnderdampedSGLD, each unit's incoming weights on a sphere", "sphere", _constrained("sphere", True)),
        Method("sgd-momentum-weightnorm", "SGD-momentum through torch's weight_norm parametrisation of the sphere family's layers (learned norms)", "sphere", _weight_norm),
        Method("m-cola-od", "ConstrainedSGLD, each unit's incoming weights in a ball (max-norm)", "ball", _constrained("ball", False)),
        Method("m-cola-ud", "ConstrainedUnderdampedSGLD, each unit's incoming weights in a ball (max-norm)", "ball", _constrained("ball", True)),
        Method("sgd-momentum-maxnorm", "SGD-momentum, each unit's incoming weights renormalised into the ball after every step (Srivastava et al. 2014)", "ball", _projected("ball")),
        Method("n-cola-od", "ConstrainedSGLD, non-negative weights (default init, projected)", "nonnegative", _constrained("nonnegative", False)),
        Method("n-cola-ud", "ConstrainedUnderdampedSGLD, non-negative weights (default init, projected)", "nonnegative", _constrained("nonnegative", True)),
        Method("n-cola-od-icnn", "ConstrainedSGLD, non-negative weights, ICNN initialisation (init.icnn_)", "nonnegative", _nonnegative_icnn),
        Method("sgd-momentum-orth-init", "SGD-momentum from the orthogonal start of o-cola-*, unconstrained", "orthogonal", _sgd_momentum_orth_init),
        Method("lstm-rmsprop", "an LSTM of about the same parameter count, RMSprop", None, _lstm_rmsprop, variant="lstm", needs=("lstm_lr",)),
        Method("geotorch-orthogonal", "geotorch's orthogonal parametrisation of the same layers, SGD-momentum", "orthogonal", _geotorch),
        # the adaptive mass (preconditioner="rmsprop"): the same scheme, one mass per block of the set
        Method("psgld", "ConstrainedSGLD with the adaptive mass and no constraint (pSGLD; RMSprop at T = 0)", None, _preconditioned(None, lr_key="psgld_lr"), needs=("precond_lr",)),
        Method("o-cola-od-rms", "ConstrainedSGLD with the adaptive mass (RMSprop's form, one per matrix), orthogonal constraints", "orthogonal", _preconditioned("orthogonal"), needs=("precond_lr",)),
        Method("o-cola-ud-rms", "ConstrainedUnderdampedSGLD with the adaptive mass, orthogonal constraints", "orthogonal", _preconditioned("orthogonal", True), needs=("precond_lr",)),
        Method("b-cola-od-rms", "ConstrainedSGLD with the adaptive mass (one per entry), box constraints", "box", _preconditioned("box"), needs=("precond_lr",)),
        Method("b-cola-ud-rms", "ConstrainedUnderdampedSGLD with the adaptive mass, box constraints", "box", _preconditioned("box", True), needs=("precond_lr",)),
        Method("c-cola-od-rms", "ConstrainedSGLD with the adaptive mass (one per (w, z) pair), circle constraints", "circle", _preconditioned("circle"), needs=("precond_lr",)),
        Method("c-cola-ud-rms", "ConstrainedUnderdampedSGLD with the adaptive mass, circle constraints", "circle", _preconditioned("circle", True), needs=("precond_lr",)),
        # transformers (shakespeare-gpt)
        Method("adamw", "AdamW (nanoGPT's: betas (0.9, 0.99), weight decay on matrices and embeddings)", None, _adamw, needs=("adamw_lr", "adamw_wd")),
        Method("muon", "torch.optim.Muon on the attention and MLP matrices, AdamW on the rest", "orthogonal", _muon, needs=("muon_lr", "adamw_lr"), requires=("torch.optim.Muon:torch>=2.9",)),
        Method("geotorch-orthogonal-adamw", "geotorch's orthogonal parametrisation of the attention and MLP matrices (per block), AdamW", "orthogonal", _geotorch_adamw, needs=("geotorch_lr", "adamw_lr")),
        Method("ngpt-adam", "nGPT's recipe: the normalised model, Adam without weight decay, its unit vectors renormalised after every step", "sphere", _projected("sphere", adam=True, lr_key="ngpt_adam_lr"), variant="ngpt", needs=("ngpt_adam_lr",)),
        Method("ngpt-s-cola-ud", "the normalised model, ConstrainedUnderdampedSGLD with its unit vectors on sphere sets", "sphere", _constrained("sphere", True), variant="ngpt", needs=("ud_lr",)),
        Method("ngpt-s-cola-ud-rms", "the normalised model, ConstrainedUnderdampedSGLD with the adaptive mass, its unit vectors on sphere sets", "sphere", _preconditioned("sphere", True, lr_key="ngpt_rms_lr"), variant="ngpt", needs=("ngpt_rms_lr",)),
        # the optimiser-only kinds (T = 0): the spectral step on the orthogonal blocks, Adam's form on the spheres
        Method("o-spectral", "ConstrainedSGLD, orthogonal attention and MLP blocks with the spectral step (steepest: W msign(skew(W^T M)) on square blocks), Muon's momentum; the Adam kind on the rest (AdamW's split)", "orthogonal", _geometric("orthogonal", "spectral", "steepest"), needs=("spectral_lr", "adamw_lr")),
        Method("o-spectral-project", "as o-spectral with the projected matrix sign (Muon's msign(M), then the set's tangent part and retraction)", "orthogonal", _geometric("orthogonal", "spectral", "project"), needs=("spectral_lr", "adamw_lr")),
        Method("ngpt-s-spectral", "the normalised model, ConstrainedSGLD with the spectral step on its sphere sets (Muon's msign of each matrix, then per-row tangent part and geodesic), the Adam kind on the rest", "sphere", _geometric("sphere", "spectral", "project", lr_key="ngpt_spectral_lr", decay=False, rest_lr_key="ngpt_adam_lr"), variant="ngpt", needs=("ngpt_spectral_lr", "ngpt_adam_lr")),
        Method("ngpt-muon", "the control of ngpt-s-spectral: the same Muon step on nGPT's matrices (Adam on the rest), in the ambient space, then renormalised (nGPT's recipe with Muon)", "sphere", _ngpt_muon, variant="ngpt", needs=("ngpt_spectral_lr", "ngpt_adam_lr")),
        Method("ngpt-s-cola-ud-rms-bc", "ngpt-s-cola-ud-rms with Adam's second-moment estimate (alpha 0.999, bias-corrected): the ablation's first step towards ngpt-s-adam-row", "sphere", _preconditioned("sphere", True, lr_key="ngpt_rms_lr", options={"alpha": 0.999, "bias_correction": True}), variant="ngpt", needs=("ngpt_rms_lr",)),
        Method("ngpt-s-cola-ud-rms-bc99", "ngpt-s-cola-ud-rms with bias correction alone (alpha stays 0.99): separates the correction from Adam's alpha in the ablation's first step", "sphere", _preconditioned("sphere", True, lr_key="ngpt_rms_lr", options={"bias_correction": True}), variant="ngpt", needs=("ngpt_rms_lr",)),
        Method("ngpt-s-adam", "the normalised model, ConstrainedSGLD with the Adam kind (per entry, bias-corrected), its unit vectors on sphere sets (retracted where ngpt-adam renormalises)", "sphere", _geometric("sphere", "adam", lr_key="ngpt_adam_lr", decay=False), variant="ngpt", needs=("ngpt_adam_lr",)),
        Method("ngpt-s-adam-row", "as ngpt-s-adam with one second moment per sphere row (the blocks of the set) instead of per entry", "sphere", _geometric("sphere", "adam", lr_key="ngpt_adam_lr", per_entry=False, decay=False), variant="ngpt", needs=("ngpt_adam_lr",)),
        Method(
            "o-cola-ud-rms-tempered",
            "o-cola-ud-rms at posterior_temperature (T = 1 / training characters: the Bayesian posterior of the per-character loss), its snapshots averaged",
            "orthogonal", _preconditioned("orthogonal", True, temperature_key="posterior_temperature"), needs=("precond_lr", "posterior_temperature"),
        ),
    ]
}


def largest_violation(model: nn.Module, optimizer, constraints: Dict[str, Any]) -> Optional[float]:
    """Largest constraint violation of the constrained weights (as the model sees them), or None."""
    if not constraints:
        return None
    if hasattr(optimizer, "violations"):
        return max(v.item() for v in optimizer.violations())
    worst = 0.0
    with torch.no_grad():
        for name, spec in constraints.items():
            owner, _, attr = name.rpartition(".")
            weight = getattr(model.get_submodule(owner), attr)  # through any parametrisation
            worst = max(worst, make_constraint(spec).violation(weight).item())
    return worst


def wall_fraction(model: nn.Module, constraints: Dict[str, Any], rtol: float = 1e-3) -> Optional[float]:
    """Of the inequality sets' units (a ball's rows, a box's or the non-negative set's entries), the
    fraction on the wall (within ``rtol`` of the radius or the bound, relative to the radius or the
    width) at the end of training: whether the constraint did anything. None without such sets."""
    from constrained_sgld.constraints.elementwise import _Interval
    from constrained_sgld.constraints.norms import Ball

    on_wall, total = 0, 0
    with torch.no_grad():
        for name, spec in constraints.items():
            c = make_constraint(spec)
            owner, _, attr = name.rpartition(".")
            w = getattr(model.get_submodule(owner), attr).detach()
            if isinstance(c, Ball):
                norms = c._norm(w).flatten()
                hit = norms >= c.radius * (1 - rtol)
            elif isinstance(c, _Interval):
                scale = (c.upper - c.lower) if math.isfinite(c.upper) else 1.0
                hit = (w - c.lower).abs() <= rtol * scale
                if math.isfinite(c.upper):
                    hit |= (c.upper - w).abs() <= rtol * scale
            else:
                continue
            on_wall += int(hit.sum())
            total += hit.numel()
    return on_wall / total if total else None

