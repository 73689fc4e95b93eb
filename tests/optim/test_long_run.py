"""Long-run feasibility in float32: no accumulation of rounding errors (slow; run with -m slow).

100,000 steps (``CSGLD_DRIFT_STEPS`` to change) with gradient noise of realistic size on a 256x64
orthogonal matrix, a 64x576 (conv-shaped, wide) one, sphere rows and the circle. Throughout, the
violation stays below 1e-5 and the momentum stays tangent to the same tolerance (relative to its
own size).
"""

import os

import pytest
import torch

import constrained_sgld as cs
from constrained_sgld import ConstrainedSGLD, ConstrainedUnderdampedSGLD

STEPS = int(os.environ.get("CSGLD_DRIFT_STEPS", "100000"))
CHECK_EVERY = max(STEPS // 200, 1)


def normal_part(c, x, p):
    """Largest normal component of the momentum ``p`` at ``x``, relative to ``max |p|``."""
    if isinstance(c, cs.Orthogonal) and c._body_frame(x):  # stored as X^T p: tangent when skew
        s = c._matrix(p)
        normal = (0.5 * (s + s.transpose(-2, -1))).abs().amax()
    elif isinstance(c, cs.Orthogonal):
        xm = c._matrix(x) / c.scale
        s = xm.transpose(-2, -1) @ c._matrix(p)
        normal = (0.5 * (s + s.transpose(-2, -1))).abs().amax()
    elif isinstance(c, cs.Sphere):
        normal = (c._inner(x, p) / c.radius).abs().amax()
    else:  # circle: momenta are arc lengths, tangent by construction
        return 0.0
    return (normal / p.abs().amax().clamp_min(1e-30)).item()


CASES = {
    "orthogonal-256x64": (cs.Orthogonal(), (256, 64)),
    "orthogonal-64x576": (cs.Orthogonal(), (64, 64, 3, 3)),
    "sphere-rows": (cs.Sphere(radius=1.0), (64, 576)),
    "circle": (cs.Circle(radius=0.1), (256, 64)),
}


@pytest.mark.slow
@pytest.mark.parametrize("scheme", ["od", "ud"])
@pytest.mark.parametrize("name", sorted(CASES))
def test_no_drift_over_long_runs(name, scheme):
    c, shape = CASES[name]
    torch.manual_seed(0)
    target = torch.randn(shape)
    x = torch.nn.Parameter(c.init_(torch.empty(shape)))
    if scheme == "od":
        opt = ConstrainedSGLD([{"params": [x], "constraint": c}], lr=0.01, temperature=1e-4, seed=0)
    else:
        opt = ConstrainedUnderdampedSGLD([{"params": [x], "constraint": c}], lr=0.01, momentum=0.9, temperature=1e-4, seed=0)
    gen = torch.Generator().manual_seed(1)
    worst_violation = worst_normal = 0.0
    for step in range(STEPS):
        # gradient of a quadratic pull towards a target, plus minibatch-like noise of similar size
        x.grad = (x.detach() - target) * 0.1 + 0.1 * torch.randn(shape, generator=gen)
        opt.step()
        if step % CHECK_EVERY == 0 or step == STEPS - 1:
            worst_violation = max(worst_violation, opt.violations()[0].item())
            if scheme == "ud":
                worst_normal = max(worst_normal, normal_part(c, x.detach(), opt.state[x]["momentum"]))
    print(f"{name} {scheme}: {STEPS} steps, largest violation {worst_violation:.2e}, largest normal momentum {worst_normal:.2e}")
    assert worst_violation < 1e-5
    assert worst_normal < 1e-5
