"""Long-memory tasks for vanilla RNNs: the copy-memory task and permuted pixel-by-pixel Fashion-MNIST.

Both use expRNN's cell (Lezcano-Casado & Martinez-Rubio, ICML 2019): ``h_t = modReLU(W_in x_t + W h_{t-1})``
with ``modReLU(z) = sign(z) relu(|z| + b)``, the recurrent ``W`` started orthogonal (Henaff et al.
2016: block-diagonal 2x2 rotations with angles U(-pi, pi)) for *every* method, so that a constrained
and an unconstrained run start from the same point and differ only in whether ``W`` stays on the set.
The LSTM baseline (``lstm-*`` methods, model variant ``"lstm"``) has its hidden size chosen so that its
parameter count matches the RNN's.
"""

from __future__ import annotations

import math
from typing import Any, Dict, Iterator, List, Optional, Tuple

import numpy as np
import torch
from torch import Tensor, nn
from torch.nn import functional as F

from .base import PRECONDITIONER_HPARAMS, ClassificationTask, Task


@torch.no_grad()
def henaff_(weight: Tensor, generator: Optional[torch.Generator] = None) -> Tensor:
    """Block-diagonal 2x2 rotations with angles U(-pi, pi) (Henaff, Szlam & LeCun 2016; expRNN's
    "henaff" init): orthogonal, with eigenvalues spread evenly around the unit circle."""
    n = weight.shape[0]
    angles = (torch.rand(n // 2, generator=generator) * 2 - 1) * math.pi
    w = torch.zeros(n, n)
    c, s = torch.cos(angles), torch.sin(angles)
    idx = torch.arange(0, 2 * (n // 2), 2)
    w[idx, idx], w[idx, idx + 1], w[idx + 1, idx], w[idx + 1, idx + 1] = c, -s, s, c
    if n % 2:
        w[-1, -1] = 1.0
    return weight.copy_(w)


class ModReLU(nn.Module):
    def __init__(self, features: int):
        super().__init__()
        self.bias = nn.Parameter(torch.empty(features).uniform_(-0.01, 0.01))

    def forward(self, z: Tensor) -> Tensor:
        return torch.sign(z) * F.relu(z.abs() + self.bias)


class ModReLURNN(nn.Module):
    """expRNN's vanilla RNN: input map, orthogonally initialised recurrent map ``recurrent.weight``
    (the constrained one), modReLU, and a linear readout (of every step, or of the last)."""

    def __init__(self, inputs: int, hidden: int, outputs: int, every_step: bool):
        super().__init__()
        self.input = nn.Linear(inputs, hidden)
        self.recurrent = nn.Linear(hidden, hidden, bias=False)
        self.nonlinearity = ModReLU(hidden)
        self.readout = nn.Linear(hidden, outputs)
        self.every_step = every_step
        henaff_(self.recurrent.weight)
        nn.init.kaiming_normal_(self.readout.weight, nonlinearity="relu")
        nn.init.zeros_(self.readout.bias)

    def states(self, x: Tensor) -> List[Tensor]:
        """Hidden states h_1..h_T for inputs ``(batch, T, inputs)``."""
        drive = self.input(x)  # every step's input term in one product
        w = self.recurrent.weight
        h = drive.new_zeros(x.shape[0], w.shape[0])
        out = []
        # unbind, not drive[:, t]: each indexing's backward would zero-fill a whole (B, T, H) tensor
        for step in drive.unbind(1):
            h = self.nonlinearity(step + h @ w.T)
            out.append(h)
        return out

    def head(self, states: List[Tensor]) -> Tensor:
        return self.readout(torch.stack(states, 1) if self.every_step else states[-1])

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.states(x))


class LSTMNet(nn.Module):
    """The LSTM baseline: ``nn.LSTM`` and a linear readout (of every step, or of the last)."""

    def __init__(self, inputs: int, hidden: int, outputs: int, every_step: bool):
        super().__init__()
        self.rnn = nn.LSTM(inputs, hidden, batch_first=True)
        self.readout = nn.Linear(hidden, outputs)
        self.every_step = every_step

    def forward(self, x: Tensor) -> Tensor:
        out, _ = self.rnn(x)
        return self.readout(out if self.every_step else out[:, -1])


def matched_lstm_hidden(parameters: int, inputs: int, outputs: int) -> int:
    """LSTM hidden size whose parameter count (``4 (H^2 + H inputs + 2H)`` plus the readout) is
    closest to ``parameters``."""
    a, b, c = 4.0, 4.0 * inputs + 8.0 + outputs, outputs - parameters
    return max(1, round((-b + math.sqrt(b * b - 4 * a * c)) / (2 * a)))


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


class RecurrentTask(Task):
    """Shared by ``copy`` and ``pixel-fmnist``: the RNN and LSTM models, the orthogonal recurrent
    matrix, RMSprop-friendly defaults and the gradient-norm-through-time profile."""

    families = ("orthogonal",)
    variants = ("lstm",)
    default_methods = ("sgd-momentum", "rmsprop", "adam", "lstm-rmsprop", "geotorch-orthogonal", "o-cola-od", "o-cola-ud")
    inputs: int
    outputs: int
    every_step: bool

    def build_model(self, variant: Optional[str] = None) -> nn.Module:
        rnn = ModReLURNN(self.inputs, self.settings["hidden"], self.outputs, self.every_step)
        if variant is None:
            return rnn
        assert variant == "lstm", variant
        hidden = matched_lstm_hidden(count_parameters(rnn), self.inputs, self.outputs)
        return LSTMNet(self.inputs, hidden, self.outputs, self.every_step)

    def constrained(self, model, family) -> Dict[str, Any]:
        assert family == "orthogonal"
        return {"recurrent.weight": "orthogonal"}

    def profile_batch(self) -> Tuple[Tensor, Tensor]:
        raise NotImplementedError

    def gradient_profile(self, model: nn.Module) -> Optional[Dict[str, Any]]:
        """``||dL/dh_t||`` for t = 1..T on a fixed batch (the whole batch's gradient, mean loss):
        how much of the loss's signal reaches each step. Only for the RNN (the LSTM's cell state is
        not exposed by ``nn.LSTM``)."""
        if not isinstance(model, ModReLURNN):
            return None
        x, y = self.profile_batch()
        states = model.states(x)
        loss = self.profile_loss(model.head(states), y)
        grads = torch.autograd.grad(loss, states)
        norms = torch.stack([g.norm() for g in grads]).tolist()
        stride = max(1, len(norms) // 200)  # at most about 200 points in results.json
        return {"axis": "time step t", "quantity": "||dL/dh_t||", "x": list(range(1, len(norms) + 1))[::stride], "norms": norms[::stride]}

    def criterion(self, logits: Tensor, targets: Tensor) -> Tensor:
        return F.cross_entropy(logits.flatten(0, -2), targets.flatten())

    def profile_loss(self, logits: Tensor, targets: Tensor) -> Tensor:
        """The loss whose gradient the profile follows back through time."""
        return self.criterion(logits, targets)


class CopyMemory(RecurrentTask):
    name = "copy"
    description = "copy-memory task (10 symbols of 8, T blanks, marker; recall the symbols), expRNN's modReLU RNN with an orthogonal recurrent matrix"
    data_source = "generated (fresh training batches; fixed validation and test sets)"
    every_step = True
    record_step_loss = True  # the curves the papers show: loss per step against the baseline
    inputs = 10  # 0 blank, 1..8 symbols, 9 marker (one-hot)
    outputs = 9  # blank or one of the 8 symbols
    presets = {
        "smoke": {"T": 20, "hidden": 32, "steps_per_epoch": 10, "epochs": 2, "batch_size": 32, "eval_size": 256, "eval_every": 1},
        "quick": {"T": 200, "hidden": 128, "steps_per_epoch": 100, "epochs": 10, "batch_size": 128, "eval_size": 1000, "eval_every": 1},
        # expRNN's copying run: L = 1000, hidden 190, batch 128, 4,000 iterations of fresh batches
        "paper": {"T": 1000, "hidden": 190, "steps_per_epoch": 100, "epochs": 40, "batch_size": 128, "eval_size": 1000, "eval_every": 1},
    }
    hparams = {
        "lr": 0.01,
        "momentum_lr": 0.003,  # sgd-momentum, sgd-wd: the o-cola-ud lr (same units), THEORY.md's probe
        "momentum": 0.9,
        "weight_decay": 1e-4,
        "adam_lr": 1e-3,  # torch's default
        "rmsprop_lr": 2e-4,  # expRNN (non-orthogonal parameters)
        "orthogonal_lr_factor": 0.1,  # expRNN: the orthogonal lr 10x smaller (geotorch-orthogonal)
        "geotorch_optimizer": "rmsprop",  # expRNN trains its parametrisation with RMSprop
        "lstm_lr": 1e-3,  # ours: RMSprop, a common LSTM setting (not tuned)
        "ud_lr": 0.003,  # THEORY.md's probe: lr 0.003, momentum 0.9, T = 0
        "ud_momentum": 0.9,
        "od_lr": 0.03,  # ud_lr / (1 - momentum): the same effective step
        "temperature": 0.0,
        "clip": None,
        # the adaptive constrained methods (*-rms): expRNN's split (lr 10x smaller on the set); lr
        # chosen on the validation split (docs/results/adaptive/copy-grid.md, o-cola-od-rms)
        "precond_lr": 2e-3,
        **PRECONDITIONER_HPARAMS,
        "precond_constrained_lr_factor": 0.1,
    }

    @property
    def baseline(self) -> float:
        """Cross-entropy per step of the memoryless strategy (blanks, then uniform guesses)."""
        return 10 * math.log(8) / (self.settings["T"] + 20)

    def sample(self, n: int, generator: torch.Generator) -> Tuple[Tensor, Tensor]:
        t = self.settings["T"]
        symbols = torch.randint(1, 9, (n, 10), generator=generator)
        x = torch.zeros(n, t + 20, dtype=torch.long)
        x[:, :10] = symbols
        x[:, t + 9] = 9  # the marker: recall starts on the next step
        y = torch.zeros(n, t + 20, dtype=torch.long)
        y[:, -10:] = symbols
        return F.one_hot(x, 10).float().to(self.device), y.to(self.device)

    def prepare(self) -> None:
        n = self.settings["eval_size"]
        self.x_val, self.y_val = self.sample(n, torch.Generator().manual_seed(10_001))
        self.x_test, self.y_test = self.sample(n, torch.Generator().manual_seed(10_002))
        self._profile = (self.x_val[:128], self.y_val[:128])

    def profile_batch(self):
        return self._profile

    def profile_loss(self, logits, targets):
        # only the recall, the part that needs memory: the blanks' loss has a direct term at every
        # step that would hide how much of the recall's signal reaches the early steps
        return self.criterion(logits[:, -10:], targets[:, -10:])

    def steps_per_epoch(self) -> int:
        return self.settings["steps_per_epoch"]

    def batches(self, generator) -> Iterator[Tuple[Tensor, Tensor]]:
        for _ in range(self.steps_per_epoch()):
            yield self.sample(self.settings["batch_size"], generator)

    def loss(self, model, inputs, targets):
        logits = model(inputs)
        recalled = (logits[:, -10:].argmax(-1) == targets[:, -10:]).double().mean(1).sum()  # per sequence
        return self.criterion(logits, targets), recalled

    @torch.no_grad()
    def _scores(self, model, x, y, prefix) -> Dict[str, float]:
        model.eval()
        loss, recalled = 0.0, 0.0
        for i in range(0, len(y), 500):
            logits = model(x[i : i + 500])
            loss += self.criterion(logits, y[i : i + 500]).item() * len(logits)
            recalled += (logits[:, -10:].argmax(-1) == y[i : i + 500, -10:]).double().sum().item()
        model.train()
        return {f"{prefix}_loss": loss / len(y), f"{prefix}_accuracy": recalled / (10 * len(y))}

    def evaluate(self, model) -> Dict[str, float]:
        return {**self._scores(model, self.x_val, self.y_val, "val"), **self._scores(model, self.x_test, self.y_test, "test")}


class PixelFashion(RecurrentTask, ClassificationTask):
    name = "pixel-fmnist"
    description = "permuted pixel-by-pixel Fashion-MNIST (784 steps, one fixed permutation), expRNN's modReLU RNN with an orthogonal recurrent matrix"
    data_source = "Fashion-MNIST, Debian package dataset-fashion-mnist"
    every_step = False
    inputs = 1
    outputs = 10
    presets = {
        "smoke": {"train_size": 256, "val_size": 128, "test_size": 128, "hidden": 32, "epochs": 1, "batch_size": 64, "eval_every": 1},
        "quick": {"train_size": 12800, "val_size": 2000, "test_size": 2000, "hidden": 128, "epochs": 3, "batch_size": 128, "eval_every": 1},
        # psMNIST as expRNN ran it (hidden 170 there; 70 epochs), on Fashion-MNIST; hours on a CPU
        "paper": {"train_size": 55000, "val_size": 5000, "test_size": 10000, "hidden": 170, "epochs": 70, "batch_size": 128, "eval_every": 1},
    }
    # the copy task's settings, but for RMSprop's lr and the fixed pixel order; the tempered
    # variant is --set temperature=1e-5 (posterior columns)
    hparams = dict(
        CopyMemory.hparams,
        rmsprop_lr=1e-3,  # expRNN's psMNIST setting for the non-orthogonal parameters
        precond_lr=5e-3,  # chosen on the validation split (docs/results/adaptive/pixel-fmnist-grid.md)
        permutation_seed=1234,  # the one fixed pixel order
    )

    def prepare(self) -> None:
        from .fmnist import fashion_splits

        sizes = (self.settings["train_size"], self.settings["val_size"], self.settings["test_size"])
        perm = torch.from_numpy(np.random.default_rng(self.hp["permutation_seed"]).permutation(784)).to(self.device)
        (x_tr, self.y_train), (x_va, self.y_val), (x_te, self.y_test) = fashion_splits(*sizes, self.device)
        # one pixel per step, in a fixed random order (the psMNIST protocol)
        self.x_train, self.x_val, self.x_test = (x[:, perm].unsqueeze(-1) for x in (x_tr, x_va, x_te))

    def profile_batch(self):
        return self.x_val[:128], self.y_val[:128]

    eval_chunk = 500  # 784 steps of 500 sequences at a time

    def criterion(self, logits, targets):
        return F.cross_entropy(logits, targets)
