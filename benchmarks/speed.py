"""``python -m benchmarks speed``: what a step and a training iteration cost, against the alternatives.

Every row is measured in one process: each candidate is warmed up, then the candidates are timed
in turn (interleaved, so that a slow phase of the machine hits them all), ``repeats`` times, and the
median is reported as a ratio to the row's baseline. Rows:

1. step only, unconstrained: both optimisers at temperature 0 and > 0 against foreach
   ``torch.optim.SGD(momentum=0.9)``, on the small ResNet of ``fmnist-resnet`` and a 784-1000-10 MLP;
   ``torch.randn`` for as many entries is shown as the floor of any noisy step;
2. a full training iteration (forward, backward, step) of that ResNet at batch 128 with every conv
   but the stem orthogonal, ``ConstrainedUnderdampedSGLD``, against the iteration with SGD-momentum;
3. the same iteration with ``geotorch``'s orthogonal parametrisation of those convs and SGD-momentum;
4. the step of a re-implementation of the authors' research script (written here from the
   description in THEORY.md: a Python loop over parameters, tangent projections after the kick and
   the OU step, exactly 10 SHAKE iterations, RATTLE velocity correction) on those parameters,
   against our step;
5. optimiser state per parameter entry, per constraint set, against SGD-momentum's one buffer;
6. step only, per set: the paper's 784-1000-10 MLP with both weight matrices on the set (biases
   free), and the small ResNet with every conv but the stem on the set, fixed gradients,
   temperature 0, each scheme against SGD-momentum stepping the same model;
7. a full training iteration (batch 128) of the paper's c-CoLA-ud (circle radii 0.05 / 0.1) on that
   MLP at temperature 0 and 1e-5, against SGD-momentum's iteration (AdamW's beside it);
8. the peers doing the same job, as training iterations on the MLP with its first weight matrix
   (1000 x 784, a Stiefel point) orthogonal: geoopt's RSGLD and SGRHMC on its Stiefel manifold, and
   posteriors' unconstrained ``sghmc`` and ``baoa`` on the whole MLP (needs the ``peers`` extra;
   skipped with a note when missing);
9. row 6 and row 7 again with the step compiled whole, ``torch.compile(opt.step)`` with the
   default inductor backend: only a sync-free step compiles as one graph, so these run
   ``sync_free=True`` and ``check_finite=False`` (the sync-free finiteness guard costs a snapshot of
   every parameter and state); the circle also with the guard. A set whose step inductor cannot
   compile is listed as failed, with the error; row 7 at T = 1e-5 too, with the draw timed beside it;
10. a training iteration with every set under each scheme at T = 0, on the MLP (both weight
   matrices on the set) and on the small ResNet (every conv but the stem), against SGD-momentum's;
11. the preconditioned step (``preconditioner="rmsprop"``) per set and scheme, adapting and
   frozen, at T = 0 and T > 0 (``TEMPERATURE``), on row 6's models, against the plain step of the same set and scheme
   (the same model, the same gradients); unconstrained too.
12. a training iteration of ``deep-mlp``'s model (32 tanh layers of width 256, batch 128, the 30
   square hidden-to-hidden matrices orthogonal) at T = 0, both schemes, against SGD-momentum's
   iteration; each scheme with the Cayley map by products (the iterative route) and by the LU
   solve, and with the square matrices on the SHAKE route (what every orthogonal matrix took
   before the Cayley route), and the step alone beside each iteration; and the primitives its
   floor is counted in (one product, one LU solve, the iterative map, SGD-momentum's iteration per
   matrix), timed in the same run.
"""

from __future__ import annotations

import json
import math
import statistics
import time
import types
import warnings
from pathlib import Path
from typing import Callable, Dict, List, Tuple

import torch
from torch import nn
from torch.nn import functional as F

from constrained_sgld import ConstrainedSGLD, ConstrainedUnderdampedSGLD, Orthogonal

from .methods import FlatOrthogonal
from .tasks.fmnist import SmallResNet

PRESETS = {
    # smoke: CI checks that every row runs; the numbers mean little
    "smoke": {"repeats": 3, "steps": 2, "iterations": 1, "batch": 16, "deep": (8, 64), "large": [(64, 64), (128, 32)], "large_steps": 1, "compiled": ["circle"], "compiled_guard": False},
    # large: row 4 again on matrices big enough that arithmetic, not per-call overhead, dominates;
    # compiled: the sets of row 9 (and, with compiled_guard, the circle with the finiteness guard too)
    "quick": {"repeats": 15, "steps": 20, "iterations": 3, "batch": 128, "deep": (32, 256), "large": [(512, 512)] * 4 + [(1024, 256)] * 2, "large_steps": 3, "compiled": ["circle", "sphere", "ball", "box", "nonnegative"], "compiled_guard": True},
}
TEMPERATURE = 1e-4


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def interleaved(candidates: Dict[str, Callable[[], None]], repeats: int, calls: int, device) -> Dict[str, float]:
    """Median seconds per call of each candidate, timed in turn ``repeats`` times after a warm-up."""
    for fn in candidates.values():
        fn()
        fn()
    samples: Dict[str, List[float]] = {name: [] for name in candidates}
    for _ in range(repeats):
        for name, fn in candidates.items():
            _sync(device)
            start = time.perf_counter()
            for _ in range(calls):
                fn()
            _sync(device)
            samples[name].append((time.perf_counter() - start) / calls)
    return {name: statistics.median(s) for name, s in samples.items()}


def mlp() -> nn.Module:
    return nn.Sequential(nn.Linear(784, 1000), nn.ReLU(), nn.Linear(1000, 10))


def orthogonal_convs(model: nn.Module) -> Dict[str, str]:
    return {n: "orthogonal" for n, p in model.named_parameters() if p.dim() == 4 and not n.startswith("stem")}


def _with_grads(model: nn.Module, device) -> nn.Module:
    model = model.to(device)
    for p in model.parameters():
        p.grad = torch.randn_like(p) * 1e-3
    return model


# ---------------------------------------------------------------------------- row 4: the research-script-style step
class ResearchScriptStep:
    """The authors' o-CoLA-ud step as their script does it (re-implemented from THEORY.md, not copied).

    Per parameter, in a Python loop: B ``p <- Pi(p - h g)``; A/2 ``W <- W + h/2 p`` followed by
    exactly 10 SHAKE iterations ``W <- W - 1/2 W_old (W^T W - I)`` and the RATTLE velocity
    ``p <- Pi((W - W_old) / (h/2))``; O ``p <- Pi(c p + d R)``; A/2 again. Orthogonal weights are
    handled as tall matrices (a wide one transposed); the rest get the same BAOAB steps unprojected.
    """

    def __init__(self, named_params, constrained: Dict[str, str], lr: float, momentum: float, temperature: float):
        self.params = [(p, name in constrained) for name, p in named_params]
        self.c = momentum
        self.h = math.sqrt(2 * lr / (1 + momentum))
        self.d = math.sqrt(temperature * (1 - momentum**2))
        self.momenta = [torch.zeros_like(p) for p, _ in self.params]

    @staticmethod
    def _tall(w: torch.Tensor) -> Tuple[torch.Tensor, bool]:
        m = w.reshape(w.shape[0], -1)
        return (m.t(), True) if m.shape[0] < m.shape[1] else (m, False)

    @staticmethod
    def _project(w: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        return v - 0.5 * w @ (v.t() @ w + w.t() @ v)

    def _drift(self, w, p, t):
        w_old = w.clone()
        w = w + t * p
        eye = torch.eye(w.shape[1], dtype=w.dtype, device=w.device)
        for _ in range(10):
            w = w - 0.5 * w_old @ (w.t() @ w - eye)
        return w, self._project(w, (w - w_old) / t)

    @torch.no_grad()
    def step(self) -> None:
        h, c, d = self.h, self.c, self.d
        for (param, constrained), buf in zip(self.params, self.momenta):
            if not constrained:
                buf.add_(param.grad, alpha=-h)
                param.add_(buf, alpha=h / 2)
                buf.mul_(c).add_(torch.randn_like(buf), alpha=d)
                param.add_(buf, alpha=h / 2)
                continue
            w, transposed = self._tall(param)
            g, _ = self._tall(param.grad)
            p, _ = self._tall(buf)
            p = self._project(w, p - h * g)  # B
            w, p = self._drift(w, p, h / 2)  # A/2
            p = self._project(w, c * p + d * torch.randn_like(p))  # O
            w, p = self._drift(w, p, h / 2)  # A/2
            if transposed:
                w, p = w.t(), p.t()
            param.copy_(w.reshape(param.shape))
            buf.copy_(p.reshape(buf.shape))


# ---------------------------------------------------------------------------- rows
SETS = {
    "circle": ("circle", {"radius": 0.1}),
    "sphere": ("sphere", {"radius": 1.0}),
    "ball": ("ball", {"radius": 1.0}),
    "box": ("box", {"lower": -1.0, "upper": 1.0}),
    "nonnegative": "nonnegative",
    "orthogonal": "orthogonal",
}
#: both schemes, as rows 6, 9 and 10 run them
SCHEMES = ((ConstrainedSGLD, {}), (ConstrainedUnderdampedSGLD, {"momentum": 0.9}))
#: the models of rows 6 and 10, with the parameters each set goes on
SET_MODELS = (
    ("784-1000-10 MLP", "both weights on the set", mlp, lambda m: ["0.weight", "2.weight"]),
    ("small ResNet", "every conv but the stem on the set", SmallResNet, lambda m: list(orthogonal_convs(m))),
)


def _on_every_set(template: nn.Module, chosen: Callable[[nn.Module], List[str]], device):
    """``(name, model, optimiser)`` for every set under each scheme: each optimiser on its own copy
    of ``template``, with the ``chosen`` parameters projected onto the set."""
    for set_name, spec in SETS.items():
        constraints = {name: spec for name in chosen(template)}
        for cls, kwargs in SCHEMES:
            model = _copy(template)
            _on_set(model, constraints)
            model = model.to(device)
            yield f"{set_name}, {cls.__name__}", model, cls(list(model.named_parameters()), constraints=constraints, lr=1e-4, seed=0, **kwargs)


def row_preconditioned(cfg, device) -> List[Dict]:
    """Row 11: each set's step with the adaptive mass against its plain step, both schemes, the
    mass adapting (the default) and frozen (``adapt_steps=1``: frozen after the untimed first
    step), at T = 0 and ``TEMPERATURE``, on row 6's models; the whole model unconstrained too."""
    rows: List[Dict] = []
    sets = {"unconstrained": None, **SETS}
    for model_name, on_set, build, chosen in SET_MODELS:
        torch.manual_seed(0)
        template = build()
        for temperature in (0.0, TEMPERATURE):
            candidates: Dict[str, Callable[[], None]] = {}
            pairs = []
            for set_name, spec in sets.items():
                constraints = {name: spec for name in chosen(template)} if spec is not None else {}
                for cls, kwargs in SCHEMES:
                    label = f"{set_name}, {cls.__name__}"
                    for mode, pre in (("plain", None), ("adapting", "rmsprop"), ("frozen", {"adapt_steps": 1})):
                        model = _copy(template)
                        _on_set(model, constraints)
                        model = _with_grads(model.to(device), device)
                        with warnings.catch_warnings():
                            warnings.simplefilter("ignore")
                            opt = cls(list(model.named_parameters()), constraints=constraints, lr=1e-5, seed=0,
                                      temperature=temperature, preconditioner=pre, **kwargs)
                        opt.step()  # states made (and a frozen mass frozen) before timing
                        candidates[f"{label}, {mode}"] = opt.step
                    pairs.append(label)
            times = interleaved(candidates, cfg["repeats"], cfg["steps"], device)
            for label in pairs:
                base = times[f"{label}, plain"]
                for mode in ("adapting", "frozen"):
                    rows.append({"row": 11, "what": f"step only, {model_name}, {on_set}, T={temperature:g}", "candidate": f"{label}, mass {mode}",
                                 "seconds": times[f"{label}, {mode}"], "ratio": times[f"{label}, {mode}"] / base, "baseline": "the same set's plain step"})
    return rows


def _compiled_step(opt) -> Callable[[], None]:
    """``torch.compile(opt.step)``, compiled now, so that a failure is seen here: the first call
    creates the optimiser's state, the second traces the steady step.

    Dynamo keeps its compiled entries per code object, and every optimiser's ``step`` is the same
    one: with the fifteen optimisers of row 9 each call would first check the guards of the
    entries compiled for the others (over a millisecond for the last ones). A user with one
    optimiser has one entry, so each optimiser here is compiled through its own copy of a small
    function's code object."""

    def call():
        return opt.step()

    code = call.__code__.replace(co_name=f"step_of_optimiser_{id(opt)}")
    own = types.FunctionType(code, call.__globals__, code.co_name, None, call.__closure__)
    step = torch.compile(own)
    step()
    step()
    return step


def row_compiled(cfg, device) -> List[Dict]:
    """Row 9: the whole sync-free step compiled by inductor, per set and scheme (as row 6), and the
    paper's c-CoLA-ud iteration at T = 0 and 1e-5 with that step (as row 7).

    Every optimiser's ``step`` is one code object to dynamo, and each instance is a recompilation
    of it: past ``recompile_limit`` (8) dynamo silently runs the step eagerly. Row 9 compiles about
    fifteen, so the limit is raised here, and hitting it is made an error."""
    import torch._dynamo

    with torch._dynamo.config.patch(recompile_limit=64, fail_on_recompile_limit_hit=True):
        return _row_compiled(cfg, device)


def _row_compiled(cfg, device) -> List[Dict]:
    torch.manual_seed(0)
    template = mlp()
    model = _with_grads(_copy(template), device)
    candidates = {"SGD-momentum (foreach)": torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9, foreach=True).step}
    failed: List[Dict] = []
    what = "step only, 784-1000-10 MLP, both weights on the set, T=0, torch.compile(opt.step), sync-free"
    for set_name in cfg["compiled"]:
        spec = SETS[set_name]
        constraints = {"0.weight": spec, "2.weight": spec}
        guards = (False, True) if set_name == "circle" and cfg["compiled_guard"] else (False,)
        for cls, kwargs in SCHEMES:
            for guard in guards:
                name = f"{set_name}, {cls.__name__}, compiled" + (", finiteness guard" if guard else "")
                model = _copy(template)
                _on_set(model, constraints)
                model = _with_grads(model, device)
                opt = cls(list(model.named_parameters()), constraints=constraints, lr=1e-4, seed=0, sync_free=True, check_finite=guard, **kwargs)
                try:
                    candidates[name] = _compiled_step(opt)
                except Exception as e:  # an inductor failure names itself; the row says so and goes on
                    failed.append({"row": 9, "what": what, "candidate": name, "error": f"{type(e).__name__}: {str(e).splitlines()[0][:160]}", "baseline": "SGD-momentum (foreach)"})
                    print(f"row 9: {name} did not compile: {failed[-1]['error']}")
    times = interleaved(candidates, cfg["repeats"], cfg["steps"], device)
    base = times["SGD-momentum (foreach)"]
    rows = [{"row": 9, "what": what, "candidate": name, "seconds": t, "ratio": t / base, "baseline": "SGD-momentum (foreach)"} for name, t in times.items()]
    rows += failed
    if "circle" not in cfg["compiled"]:
        return rows
    # the paper's iteration: forward and backward eager, as a user would leave them; the step compiled
    x, y = _mlp_batch(cfg, device)
    torch.manual_seed(0)
    base_model = mlp().to(device)
    model = _copy(base_model)
    iterations = {"SGD-momentum": _iteration(model, torch.optim.SGD(model.parameters(), lr=0.03, momentum=0.9, foreach=True), x, y)}
    c = math.exp(-0.3)
    paper = {"0.weight": ("circle", {"radius": 0.05}), "2.weight": ("circle", {"radius": 0.1})}
    # T > 0: the draw from the optimiser's generator is a graph break, and the draw itself is the
    # floor (the randn candidate: any Langevin iteration costs at least 1 + its ratio)
    variants = [(0.0, False), (1e-5, False)] + ([(0.0, True)] if cfg["compiled_guard"] else [])
    for temperature, guard in variants:
        model = _copy(base_model)
        opt = ConstrainedUnderdampedSGLD(model.named_parameters(), constraints=paper, lr=0.09 * (1 + c) / 2, momentum=c, temperature=temperature, seed=0, sync_free=True, check_finite=guard)
        F.cross_entropy(model(x), y).backward()
        try:
            step = _compiled_step(opt)
        except Exception as e:
            print(f"row 9: the c-CoLA-ud step did not compile: {type(e).__name__}")
            continue

        def run(model=model, opt=opt, step=step):
            opt.zero_grad(set_to_none=True)
            F.cross_entropy(model(x), y).backward()
            step()

        iterations[f"c-CoLA-ud T={temperature:g}, compiled step" + (", finiteness guard" if guard else "")] = run
    n = sum(p.numel() for p in base_model.parameters())
    iterations[f"torch.randn of {n:,} entries"] = lambda n=n: torch.randn(n, device=device)
    times = interleaved(iterations, cfg["repeats"], max(1, cfg["iterations"]), device)
    base = times["SGD-momentum"]
    what = f"training iteration, 784-1000-10 MLP, batch {cfg['batch']} (the paper's c-CoLA-ud), torch.compile(opt.step), sync-free"
    return rows + [{"row": 9, "what": what, "candidate": name, "seconds": t, "ratio": t / base, "baseline": "SGD-momentum"} for name, t in times.items()]


def row_set_iterations(cfg, device) -> List[Dict]:
    """Row 10: a training iteration with every set under each scheme (T = 0), on the paper's MLP
    (both weight matrices on the set) and on the small ResNet (every conv but the stem on the set,
    the parameters row 2 makes orthogonal), against SGD-momentum's iteration on the same model and
    batch. Row 6 times the step alone; this is what a user's epoch pays."""
    batch = cfg["batch"]
    batches = {"784-1000-10 MLP": _mlp_batch(cfg, device), "small ResNet": _resnet_batch(batch, device)}
    rows: List[Dict] = []
    for model_name, _, build, chosen in SET_MODELS:
        x, y = batches[model_name]
        torch.manual_seed(0)
        template = build().to(device)
        model = _copy(template)
        candidates = {"SGD-momentum": _iteration(model, torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9, foreach=True), x, y)}
        for name, model, opt in _on_every_set(template, chosen, device):
            candidates[name] = _iteration(model, opt, x, y)
        times = interleaved(candidates, cfg["repeats"], max(1, cfg["iterations"]), device)
        base = times["SGD-momentum"]
        what = f"training iteration, {model_name}, batch {batch}, every set, T=0"
        rows += [{"row": 10, "what": what, "candidate": name, "seconds": t, "ratio": t / base, "baseline": "SGD-momentum"} for name, t in times.items()]
    return rows


class ShakeRouteOrthogonal(Orthogonal):
    """The orthogonal set with every matrix on the SHAKE route (square ones included), as row 12's
    comparison: what square matrices cost before the Cayley route."""

    CAYLEY_DTYPES = ()


def row_deep_mlp(cfg, device) -> List[Dict]:
    """Row 12: deep-mlp's iteration (its quick model, its lrs: SGD-momentum and o-cola-ud at lr
    0.01, momentum 0.9; o-cola-od at 0.1), T = 0, the square hidden matrices orthogonal; each
    scheme on the Cayley route by products (``cayley="iterative"``), by the LU solve
    (``cayley="solve"``) and on the SHAKE route; then each step alone."""
    from .tasks.deep import DeepTanhMLP

    depth, width = cfg["deep"]
    batch = cfg["batch"]
    g = torch.Generator().manual_seed(0)
    x = torch.randn(batch, 784, generator=g).to(device)
    y = torch.randint(0, 10, (batch,), generator=g).to(device)
    torch.manual_seed(0)
    template = DeepTanhMLP(depth, width).to(device)
    hidden = [f"layers.{i}.weight" for i in range(1, depth - 1)]
    for name in hidden:
        Orthogonal().init_(dict(template.named_parameters())[name])
    setups = {"SGD-momentum": None}
    routes = (
        ("Cayley route, products (iterative)", Orthogonal(cayley="iterative")),
        ("Cayley route, LU solve", Orthogonal(cayley="solve")),
        ("SHAKE route", ShakeRouteOrthogonal()),
    )
    for route, cons in routes:
        setups[f"o-cola-ud (ConstrainedUnderdampedSGLD), {route}"] = (ConstrainedUnderdampedSGLD, {"lr": 0.01, "momentum": 0.9}, cons)
        setups[f"o-cola-od (ConstrainedSGLD), {route}"] = (ConstrainedSGLD, {"lr": 0.1}, cons)
    iterations: Dict[str, Callable[[], None]] = {}
    steps: Dict[str, Callable[[], None]] = {}
    for label, setup in setups.items():
        model = _copy(template)
        if setup is None:
            opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, foreach=True)
        else:
            cls, kwargs, cons = setup
            opt = cls(list(model.named_parameters()), constraints={n: cons for n in hidden}, seed=0, **kwargs)
        iterations[label] = _iteration(model, opt, x, y)
        iterations[label]()  # gradients and states exist before the steps are timed alone
        steps[label] = opt.step
    what = f"training iteration, deep-mlp ({depth} tanh layers of width {width}, {depth - 2} square matrices orthogonal), batch {batch}, T=0"
    times = interleaved(iterations, cfg["repeats"], max(1, cfg["iterations"]), device)
    rows = [{"row": 12, "what": what, "candidate": n, "seconds": t, "ratio": t / times["SGD-momentum"], "baseline": "SGD-momentum"} for n, t in times.items()]
    times = interleaved(steps, cfg["repeats"], max(1, cfg["iterations"]), device)
    what = f"step only, deep-mlp ({depth} x {width}), the iteration's gradients, T=0"
    rows += [{"row": 12, "what": what, "candidate": n, "seconds": t, "ratio": t / times["SGD-momentum"], "baseline": "SGD-momentum's step"} for n, t in times.items()]
    rows += _deep_mlp_primitives(cfg, device, width, iterations["SGD-momentum"], depth - 2)
    return rows


def _deep_mlp_primitives(cfg, device, width: int, sgd_iteration: Callable[[], None], matrices: int) -> List[Dict]:
    """Row 12's floor, read in the same run: one width x width product, the LU solve of the Cayley
    map (``width`` right-hand sides), the LU factorisation alone, and SGD-momentum's iteration per
    orthogonal matrix, each against the product (docs/performance.md counts a step's products
    and solves)."""
    g = torch.Generator().manual_seed(1)
    x = torch.randn(width, width, generator=g).to(device)
    a = torch.randn(width, width, generator=g).to(device) * 0.01
    a = a - a.T
    lhs = torch.eye(width, device=device) + 0.5 * a
    from constrained_sgld.constraints.orthogonal import cayley_iterative

    calls = {
        "one product": lambda: x @ a,
        "one LU solve, all right-hand sides (the Cayley map)": lambda: torch.linalg.solve_ex(lhs, x.T, check_errors=False),
        "the Cayley map by 3 products (iterative)": lambda: cayley_iterative(x, a, 1.0, 3),
        "LU factorisation alone": lambda: torch.linalg.lu_factor_ex(lhs, check_errors=False),
    }
    times = interleaved(calls, cfg["repeats"], max(1, cfg["steps"]), device)
    times["SGD-momentum's iteration / orthogonal matrices"] = interleaved({"it": sgd_iteration}, cfg["repeats"], max(1, cfg["iterations"]), device)["it"] / matrices
    what = f"primitives, one {width} x {width} matrix (the floor of the step: docs/performance.md)"
    return [{"row": 12, "what": what, "candidate": n, "seconds": t, "ratio": t / times["one product"], "baseline": "one product"} for n, t in times.items()]


def _on_set(model: nn.Module, constraints: Dict[str, object]) -> None:
    from constrained_sgld import make_constraint

    params = dict(model.named_parameters())
    with torch.no_grad():
        for name, spec in constraints.items():
            params[name].copy_(make_constraint(spec).project(params[name]))


def row_sets(cfg, device) -> List[Dict]:
    """Row 6: every set's step under both schemes, T = 0, against SGD-momentum's step on the same
    model: the paper's MLP (both weight matrices on the set) and the small ResNet (every conv but
    the stem)."""
    rows: List[Dict] = []
    for model_name, on_set, build, chosen in SET_MODELS:
        torch.manual_seed(0)
        template = build()
        model = _with_grads(_copy(template), device)
        opts = {"SGD-momentum (foreach)": torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9, foreach=True)}
        for name, model, opt in _on_every_set(template, chosen, device):
            _with_grads(model, device)
            opts[name] = opt
        times = interleaved({name: opt.step for name, opt in opts.items()}, cfg["repeats"], cfg["steps"], device)
        base = times["SGD-momentum (foreach)"]
        rows += [
            {"row": 6, "what": f"step only, {model_name}, {on_set}, T=0", "candidate": name, "seconds": t, "ratio": t / base, "baseline": "SGD-momentum (foreach)"}
            for name, t in times.items()
        ]
    return rows


def _copy(model: nn.Module) -> nn.Module:
    import copy

    return copy.deepcopy(model)


def _mlp_batch(cfg, device):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(cfg["batch"], 784, generator=g).to(device)
    y = torch.randint(0, 10, (cfg["batch"],), generator=g).to(device)
    return x, y


def _resnet_batch(batch: int, device):
    return torch.randn(batch, 1, 28, 28, device=device), torch.randint(0, 10, (batch,), device=device)


def _iteration(model: nn.Module, opt, x, y) -> Callable[[], None]:
    def run():
        opt.zero_grad(set_to_none=True)
        F.cross_entropy(model(x), y).backward()
        opt.step()

    return run


def row_paper_iteration(cfg, device) -> List[Dict]:
    """Row 7: the paper's c-CoLA-ud iteration (circle radii 0.05 / 0.1, h = 0.3, gamma = 1)."""
    x, y = _mlp_batch(cfg, device)
    torch.manual_seed(0)
    base_model = mlp().to(device)
    candidates = {}
    model = _copy(base_model)
    candidates["SGD-momentum"] = _iteration(model, torch.optim.SGD(model.parameters(), lr=0.03, momentum=0.9, foreach=True), x, y)
    model = _copy(base_model)
    candidates["AdamW"] = _iteration(model, torch.optim.AdamW(model.parameters(), lr=1e-3, foreach=True), x, y)
    constraints = {"0.weight": ("circle", {"radius": 0.05}), "2.weight": ("circle", {"radius": 0.1})}
    c = math.exp(-0.3)
    for t in (0.0, 1e-5):
        model = _copy(base_model)
        opt = ConstrainedUnderdampedSGLD(model.named_parameters(), constraints=constraints, lr=0.09 * (1 + c) / 2, momentum=c, temperature=t, seed=0)
        candidates[f"c-CoLA-ud T={t:g}"] = _iteration(model, opt, x, y)
    times = interleaved(candidates, cfg["repeats"], max(1, cfg["iterations"]), device)
    base = times["SGD-momentum"]
    return [
        {"row": 7, "what": f"training iteration, 784-1000-10 MLP, batch {cfg['batch']} (the paper's c-CoLA-ud)", "candidate": name, "seconds": t, "ratio": t / base, "baseline": "SGD-momentum"}
        for name, t in times.items()
    ]


def row_peers(cfg, device) -> List[Dict]:
    """Row 8: geoopt's samplers and posteriors' SG-MCMC against ours, as training iterations."""
    try:
        import geoopt

        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)  # tensordict's notices about posteriors' classes
            import posteriors
    except ImportError as e:
        print(f"row 8 skipped: the peers are not installed ({e}); pip install -e \".[peers]\"")
        return []
    from torch.func import functional_call

    x, y = _mlp_batch(cfg, device)
    torch.manual_seed(0)
    base_model = mlp().to(device)
    with torch.no_grad():
        Orthogonal().init_(base_model[0].weight)  # (1000, 784): tall, a Stiefel point
    candidates: Dict[str, Callable[[], None]] = {}
    model = _copy(base_model)
    candidates["SGD-momentum"] = _iteration(model, torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9, foreach=True), x, y)
    model = _copy(base_model)
    opt = ConstrainedUnderdampedSGLD(model.named_parameters(), constraints={"0.weight": "orthogonal"}, lr=1e-3, momentum=0.9, temperature=TEMPERATURE, seed=0)
    candidates[f"ours: ConstrainedUnderdampedSGLD, orthogonal, T={TEMPERATURE:g}"] = _iteration(model, opt, x, y)
    for name, cls, kwargs in (("RSGLD", geoopt.samplers.RSGLD, {"epsilon": 1e-3}), ("SGRHMC", geoopt.samplers.SGRHMC, {"epsilon": 1e-3})):
        model = _copy(base_model)
        model[0].weight = geoopt.ManifoldParameter(model[0].weight.detach().clone(), manifold=geoopt.Stiefel())
        sampler = cls(model.parameters(), **kwargs)

        def closure(model=model):
            return -F.cross_entropy(model(x), y)  # log-density; the sampler calls backward and zeroes grads

        candidates[f"geoopt {name}, Stiefel (host read per step)"] = (lambda s=sampler, c=closure: s.step(c))
    model = _copy(base_model)
    params = {k: v.detach() for k, v in model.named_parameters()}

    def log_posterior(p, batch):
        out = functional_call(model, p, (batch[0],))
        return -F.cross_entropy(out, batch[1]), out

    for name, module in (("sghmc", posteriors.sgmcmc.sghmc), ("baoa", posteriors.sgmcmc.baoa)):
        transform = module.build(log_posterior, lr=1e-3, temperature=TEMPERATURE)
        holder = {"state": transform.init(params)}

        def run(t=transform, h=holder):
            out = t.update(h["state"], (x, y))
            h["state"] = out[0] if isinstance(out, tuple) else out  # posteriors >= 0.1.3 returns (state, aux)

        candidates[f"posteriors {name}, unconstrained"] = run
    times = interleaved(candidates, cfg["repeats"], max(1, cfg["iterations"]), device)
    base = times["SGD-momentum"]
    return [
        {"row": 8, "what": f"training iteration, 784-1000-10 MLP, batch {cfg['batch']}, first weight orthogonal where the method can", "candidate": name, "seconds": t, "ratio": t / base, "baseline": "SGD-momentum"}
        for name, t in times.items()
    ]


def row_step_only(model_name: str, build: Callable[[], nn.Module], cfg, device) -> List[Dict]:
    model = _with_grads(build(), device)
    numel = sum(p.numel() for p in model.parameters())
    params = list(model.named_parameters())
    opts = {
        "SGD-momentum (foreach)": torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9, foreach=True),
        "ConstrainedSGLD T=0": ConstrainedSGLD(params, lr=1e-3, seed=0),
        f"ConstrainedSGLD T={TEMPERATURE:g}": ConstrainedSGLD(params, lr=1e-3, temperature=TEMPERATURE, seed=0),
        "ConstrainedUnderdampedSGLD T=0": ConstrainedUnderdampedSGLD(params, lr=1e-3, momentum=0.9, seed=0),
        # what the non-finite gradient check costs (one sum per gradient, read once)
        "ConstrainedUnderdampedSGLD T=0, check_finite=False": ConstrainedUnderdampedSGLD(params, lr=1e-3, momentum=0.9, seed=0, check_finite=False),
        f"ConstrainedUnderdampedSGLD T={TEMPERATURE:g}": ConstrainedUnderdampedSGLD(params, lr=1e-3, momentum=0.9, temperature=TEMPERATURE, seed=0),
    }
    candidates = {name: opt.step for name, opt in opts.items()}
    noise = torch.empty(numel, device=device)
    candidates[f"torch.randn of {numel:,} entries"] = lambda: noise.normal_()
    times = interleaved(candidates, cfg["repeats"], cfg["steps"], device)
    base = times["SGD-momentum (foreach)"]
    return [
        {"row": 1, "what": f"step only, {model_name}, unconstrained", "candidate": name, "seconds": t, "ratio": t / base, "baseline": "SGD-momentum (foreach)"}
        for name, t in times.items()
    ]


def row_iteration(cfg, device) -> List[Dict]:
    batch = cfg["batch"]
    x, y = _resnet_batch(batch, device)

    def make(kind: str):
        torch.manual_seed(0)
        model = SmallResNet().to(device)
        constraints = orthogonal_convs(model)
        for name, p in model.named_parameters():
            if name in constraints:
                with torch.no_grad():
                    Orthogonal().init_(p)
        if kind == "sgd":
            opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
        elif kind == "ours":
            opt = ConstrainedUnderdampedSGLD(model.named_parameters(), constraints=constraints, lr=0.1, momentum=0.9, seed=0)
        elif kind == "ours-T":
            opt = ConstrainedUnderdampedSGLD(model.named_parameters(), constraints=constraints, lr=0.1, momentum=0.9, temperature=TEMPERATURE, seed=0)
        elif kind == "ours-T-sync-free":
            opt = ConstrainedUnderdampedSGLD(
                model.named_parameters(), constraints=constraints, lr=0.1, momentum=0.9, temperature=TEMPERATURE, seed=0, sync_free=True
            )
        elif kind == "geotorch":
            modules = dict(model.named_modules())
            for name in constraints:
                owner, _, attr = name.rpartition(".")
                torch.nn.utils.parametrize.register_parametrization(modules[owner], attr, FlatOrthogonal(getattr(modules[owner], attr).shape))
            opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
        elif kind == "research":
            opt = ResearchScriptStep(list(model.named_parameters()), constraints, lr=0.1, momentum=0.9, temperature=0.0)

        def iteration():
            for p in model.parameters():
                p.grad = None
            F.cross_entropy(model(x), y).backward()
            opt.step()

        return iteration

    names = {
        "SGD-momentum": "sgd",
        "ConstrainedUnderdampedSGLD, orthogonal convs, T=0": "ours",
        f"ConstrainedUnderdampedSGLD, orthogonal convs, T={TEMPERATURE:g}": "ours-T",
        f"ConstrainedUnderdampedSGLD, orthogonal convs, T={TEMPERATURE:g}, sync_free": "ours-T-sync-free",
        "geotorch.orthogonal (Stiefel, expm) + SGD-momentum": "geotorch",
        "research-script-style o-CoLA-ud, T=0": "research",
    }
    times = interleaved({n: make(k) for n, k in names.items()}, cfg["repeats"], cfg["iterations"], device)
    base = times["SGD-momentum"]
    rows = []
    for name, t in times.items():
        row = 3 if "geotorch" in name else 2
        rows.append({"row": row, "what": f"training iteration, small ResNet, batch {batch}", "candidate": name, "seconds": t, "ratio": t / base, "baseline": "SGD-momentum"})
    return rows


def row_research_step(cfg, device) -> List[Dict]:
    torch.manual_seed(0)
    model = _with_grads(SmallResNet(), device)
    constraints = orthogonal_convs(model)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name in constraints:
                Orthogonal().init_(p)
    rows = _research_vs_ours(list(model.named_parameters()), constraints, 0.1, cfg["repeats"], cfg["steps"], device, "small ResNet, orthogonal convs")
    # the same on large matrices (gradients of norm ~0.1 per entry, lr 0.01: moderate steps)
    large = []
    for i, shape in enumerate(cfg["large"]):
        w = torch.empty(shape, device=device)
        Orthogonal().init_(w)
        w.grad = 0.1 * torch.randn(shape, device=device)
        large.append((f"w{i}", w))
    counts: Dict[Tuple[int, int], int] = {}
    for shape in cfg["large"]:
        counts[shape] = counts.get(shape, 0) + 1
    what = "large matrices " + " + ".join(f"{c}x {r}x{k}" for (r, k), c in counts.items())
    rows += _research_vs_ours(large, {n: "orthogonal" for n, _ in large}, 0.01, max(3, cfg["repeats"] // 2), cfg["large_steps"], device, what)
    return rows


def _research_vs_ours(params, constraints, lr, repeats, steps, device, what) -> List[Dict]:
    # each candidate gets its own copy of the parameters so that none disturbs the others
    copies = []
    for _ in range(3):
        copy = [(n, p.detach().clone().requires_grad_()) for n, p in params]
        for (_, c), (_, p) in zip(copy, params):
            c.grad = p.grad.clone()
        copies.append(copy)
    ours_params, sync_free_params, research_params = copies
    ours = ConstrainedUnderdampedSGLD(ours_params, constraints=constraints, lr=lr, momentum=0.9, temperature=TEMPERATURE, seed=0)
    sync_free = ConstrainedUnderdampedSGLD(
        sync_free_params, constraints=constraints, lr=lr, momentum=0.9, temperature=TEMPERATURE, seed=0, sync_free=True
    )
    research = ResearchScriptStep(research_params, constraints, lr=lr, momentum=0.9, temperature=TEMPERATURE)
    candidates = {
        "research-script-style step": research.step,
        "ConstrainedUnderdampedSGLD step": ours.step,
        "ConstrainedUnderdampedSGLD step, sync_free": sync_free.step,
    }
    times = interleaved(candidates, repeats, steps, device)
    base = times["ConstrainedUnderdampedSGLD step"]
    return [
        {"row": 4, "what": f"step only, {what}, T={TEMPERATURE:g}", "candidate": name, "seconds": t, "ratio": t / base, "baseline": "ConstrainedUnderdampedSGLD step"}
        for name, t in times.items()
    ]


def row_memory(device) -> List[Dict]:
    """Bytes of optimiser state per byte of constrained parameter, after one step."""
    rows = []
    w = torch.nn.Parameter(torch.rand(64, 32, device=device) * 0.5 + 0.1)
    sgd = torch.optim.SGD([w], lr=0.1, momentum=0.9)
    w.grad = torch.randn_like(w)
    sgd.step()
    param_bytes = w.numel() * w.element_size()
    sgd_bytes = sum(t.numel() * t.element_size() for t in sgd.state[w].values() if torch.is_tensor(t))
    for spec in ["orthogonal", "sphere", "ball", "circle", "nonnegative", ("box", {"lower": 0.0, "upper": 1.0}), None]:
        for cls in (ConstrainedUnderdampedSGLD, ConstrainedSGLD):
            p = torch.nn.Parameter(w.detach().clone())
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # the start is projected onto each set: expected here
                opt = cls([p], lr=0.01, constraints={p: spec}, seed=0, temperature=TEMPERATURE)
            p.grad = torch.randn_like(p) * 1e-3
            with torch.no_grad():
                if spec is not None:
                    c = opt.param_groups[0]["constraint"]
                    p.copy_(c.project(p))
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                opt.step()
            state = opt.state[p]
            state_bytes = sum(t.numel() * t.element_size() for t in state.values() if torch.is_tensor(t) and t.dim() > 0)
            name = spec if isinstance(spec, str) else (spec[0] if spec else "unconstrained")
            rows.append(
                {
                    "row": 5,
                    "what": "optimiser state per parameter (x parameter size)",
                    "candidate": f"{cls.__name__}, {name}",
                    "state": sorted(k for k, t in state.items() if torch.is_tensor(t) and t.dim() > 0),
                    "ratio": state_bytes / param_bytes,
                    "baseline": f"SGD-momentum: {sgd_bytes / param_bytes:g}",
                }
            )
    return rows


def markdown(rows: List[Dict], header: str) -> str:
    out = [header, "", "| row | what | candidate | median time | ratio | baseline |", "|---|---|---|---|---|---|"]
    for r in rows:
        if "error" in r:
            out.append(f"| {r['row']} | {r['what']} | {r['candidate']} | failed: {r['error']} | - | {r['baseline']} |")
            continue
        t = f"{r['seconds'] * 1e3:.3f} ms" if "seconds" in r else ", ".join(r.get("state", [])) or "none"
        out.append(f"| {r['row']} | {r['what']} | {r['candidate']} | {t} | {r['ratio']:.2f}x | {r['baseline']} |")
    return "\n".join(out) + "\n"


def main(args) -> int:
    from .runner import device_name, versions

    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: no CUDA device is available to this torch")
    cfg = PRESETS[args.preset]
    every = {
        1: lambda: row_step_only("small ResNet (fmnist-resnet)", SmallResNet, cfg, device) + row_step_only("784-1000-10 MLP", mlp, cfg, device),
        2: lambda: row_iteration(cfg, device),  # rows 2 and 3
        4: lambda: row_research_step(cfg, device),
        5: lambda: row_memory(device),
        6: lambda: row_sets(cfg, device),
        7: lambda: row_paper_iteration(cfg, device),
        8: lambda: row_peers(cfg, device),
        9: lambda: row_compiled(cfg, device),
        10: lambda: row_set_iterations(cfg, device),
        11: lambda: row_preconditioned(cfg, device),
        12: lambda: row_deep_mlp(cfg, device),
    }
    chosen = sorted(every) if not getattr(args, "rows", None) else [int(r) for r in args.rows.split(",")]
    unknown = [r for r in chosen if r not in every]
    if unknown:
        raise SystemExit(f"--rows: no row(s) {unknown}; the rows are {sorted(every)} (2 runs rows 2 and 3)")
    rows: List[Dict] = []
    for r in chosen:
        rows += every[r]()
    folder = Path(args.out) / "speed"
    folder.mkdir(parents=True, exist_ok=True)
    info = {"preset": args.preset, "settings": cfg, "device": device_name(device), "versions": versions(), "temperature": TEMPERATURE}
    (folder / "speed.json").write_text(json.dumps({**info, "rows": rows}, indent=1))
    header = (
        f"# Speed ({args.preset}; {info['device']}; torch {info['versions']['torch']})\n\n"
        f"Command: `python -m benchmarks speed --preset {args.preset} --device {args.device}`. Median of "
        f"{cfg['repeats']} interleaved timings after warm-up; ratios are to the row's baseline."
    )
    text = markdown(rows, header)
    (folder / "speed.md").write_text(text)
    print(text)
    print(f"written: {folder / 'speed.json'}, {folder / 'speed.md'}")
    return 0
