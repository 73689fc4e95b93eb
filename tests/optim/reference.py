"""The per-tensor reference of the three schemes, written with the sets' per-tensor operations only and
no fused sequence: the optimisers' list-level path (fused operations, packed batches, overrides in
the sets) must compute the same update."""

import math


from constrained_sgld import ConstrainedSGLD, ConstrainedSGNHT, ConstrainedUnderdampedSGLD
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


def thermostat_reference(params, grads, states, constraint, *, xi, dims, lr, momentum, temperature, thermostat_mass, weight_decay, noise, mass=None):
    """BADODAB, tensor by tensor for B, A and O; the thermostat reads the whole group's momenta
    (velocities ``M^-1 p`` with a preconditioner's mass ``M``: kinetic energy ``v^T M v``)."""
    h = langevin_step_size(lr, momentum)
    a = -math.log(momentum) / h
    masses = mass if mass is not None else [1.0] * len(params)

    def kinetic(momenta):
        return sum(constraint.tangent_sq_norm([x], [p * m**0.5], [s]) for x, p, s, m in zip(params, momenta, states, masses))

    momenta = []
    for x, g, state in zip(params, grads, states):
        p = state["momentum"] + constraint.tangent_force(x, _force(g, x, weight_decay, -h), state)  # B
        momenta.append(constraint.drift_(x, p, 0.5 * h, state))  # A/2
    xi += 0.5 * h * (kinetic(momenta) / dims - temperature) / thermostat_mass  # D/2
    decay = math.exp(-xi * h)
    z = 2.0 * xi * h
    std = math.sqrt(2.0 * a * temperature * h * (-math.expm1(-z) / z if abs(z) > 1e-12 else 1.0))
    for i, (x, state) in enumerate(zip(params, states)):  # O
        momenta[i] = momenta[i] * decay
        if temperature > 0:
            momenta[i] = momenta[i] + constraint.tangent_noise(x, noise[i], std, state)
    xi += 0.5 * h * (kinetic(momenta) / dims - temperature) / thermostat_mass  # D/2
    for x, p, state in zip(params, momenta, states):
        state["momentum"].copy_(constraint.drift_(x, p, 0.5 * h, state))  # A/2
    return xi


class _Reference:
    """Steps each group with the reference function, tensor by tensor, without packing."""

    def _packing(self, constraint, pieces):
        return None


class ReferenceSGLD(_Reference, ConstrainedSGLD):
    def _update_group(self, group, constraint, params, grads, states, noise, ctx, *, weight_decay, mass=None):
        overdamped_reference(params, grads, states, constraint, lr=group["lr"], temperature=group["temperature"],
                             weight_decay=weight_decay, noise=noise)


class ReferenceUnderdampedSGLD(_Reference, ConstrainedUnderdampedSGLD):
    def _update_group(self, group, constraint, params, grads, states, noise, ctx, *, weight_decay, mass=None):
        underdamped_reference(params, grads, states, constraint, lr=group["lr"], momentum=group["momentum"],
                              temperature=group["temperature"], weight_decay=weight_decay, noise=noise)


class ReferenceSGNHT(_Reference, ConstrainedSGNHT):
    def _update_group(self, group, constraint, params, grads, states, noise, ctx, *, weight_decay, mass=None):
        xi = self._thermostat(group, params[0].device)
        q = group["thermostat_mass"] or (group["temperature"] if group["temperature"] > 0 else 1.0)
        new = thermostat_reference(params, grads, states, constraint, xi=float(xi), dims=self._step_dims, lr=group["lr"],
                                   momentum=group["momentum"], temperature=group["temperature"], thermostat_mass=q,
                                   weight_decay=weight_decay, noise=noise, mass=mass)
        xi.fill_(new)


REFERENCE = {ConstrainedSGLD: ReferenceSGLD, ConstrainedUnderdampedSGLD: ReferenceUnderdampedSGLD, ConstrainedSGNHT: ReferenceSGNHT}
