"""The per-tensor reference of both schemes, written with the sets' per-tensor operations only and
no fused sequence: the optimisers' list-level path (fused operations, packed batches, overrides in
the sets) must compute the same update."""

import math

from constrained_sgld import ConstrainedSGLD, ConstrainedUnderdampedSGLD
from constrained_sgld.optim.underdamped import langevin_step_size


def _force(g, x, weight_decay, scale):
    return (g + weight_decay * x) * scale


def overdamped_reference(params, grads, states, constraint, *, lr, temperature, weight_decay, noise):
    std = math.sqrt(2.0 * lr * temperature)
    for i, (x, g, state) in enumerate(zip(params, grads, states)):
        step = constraint.tangent_force(x, _force(g, x, weight_decay, -lr), state)
        if temperature > 0:
            step = step + constraint.tangent_noise(x, noise[i], std, state)
        constraint.retract_(x, step, state)


def underdamped_reference(params, grads, states, constraint, *, lr, momentum, temperature, weight_decay, noise):
    c = momentum
    h = langevin_step_size(lr, c)
    std = math.sqrt(temperature * (1.0 - c * c))
    for i, (x, g, state) in enumerate(zip(params, grads, states)):
        p = state["momentum"] + constraint.tangent_force(x, _force(g, x, weight_decay, -h), state)  # B
        if h > 0:
            p = constraint.drift_(x, p, 0.5 * h, state)  # A/2
        p = p * c  # O
        if temperature > 0:
            p = p + constraint.tangent_noise(x, noise[i], std, state)
        if h > 0:
            p = constraint.drift_(x, p, 0.5 * h, state)  # A/2
        state["momentum"].copy_(p)


class _Reference:
    """Steps each group with the reference function, tensor by tensor, without packing."""

    def _packing(self, constraint, pieces):
        return None


class ReferenceSGLD(_Reference, ConstrainedSGLD):
    def _update_group(self, group, constraint, params, grads, states, noise, ctx):
        overdamped_reference(params, grads, states, constraint, lr=group["lr"], temperature=group["temperature"],
                             weight_decay=group["weight_decay"], noise=noise)


class ReferenceUnderdampedSGLD(_Reference, ConstrainedUnderdampedSGLD):
    def _update_group(self, group, constraint, params, grads, states, noise, ctx):
        underdamped_reference(params, grads, states, constraint, lr=group["lr"], momentum=group["momentum"],
                              temperature=group["temperature"], weight_decay=group["weight_decay"], noise=noise)


REFERENCE = {ConstrainedSGLD: ReferenceSGLD, ConstrainedUnderdampedSGLD: ReferenceUnderdampedSGLD}
