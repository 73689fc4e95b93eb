"""The uncertainty metrics of the Bayesian deep-learning protocol (Laplace Redux, Daxberger et al.
2021; Ashukha et al. 2020; Ovadia et al. 2019), on predicted class probabilities.

- :func:`brier`: the Brier score, ``mean_n sum_k (p_nk - 1[k = y_n])^2`` (0 perfect, 2 the worst;
  a uniform prediction over K classes scores ``1 - 1/K``).
- :func:`selective_accuracy`: the accuracy on the most confident fraction of the examples, for
  fractions 0.1, 0.2, ..., 1 (a model whose confidence ranks its errors last rises towards 1).
- :func:`ood_detection`: AUROC and FPR at 95% TPR of a score (max probability, or negative
  predictive entropy) that should be higher in distribution than out of it.
- :func:`fit_temperature` and :func:`calibrated_nll`: the NLL after temperature scaling, the
  temperature fitted on the validation split (Guo et al. 2017; Ashukha et al. ask for it before
  methods are compared).
- :func:`rotate`: images rotated by an angle (the rotated-MNIST shift protocol of Ovadia et al.).
- :func:`corrupt`: images under a synthetic corruption (Gaussian noise, Gaussian blur, contrast) at
  increasing severity, computed locally (the kinds of Hendrycks & Dietterich's ImageNet-C / MNIST-C
  that make sense for 28x28 greyscale, at our own severities: :data:`CORRUPTIONS`).
"""

from __future__ import annotations

import math
from typing import Dict, List, Sequence

import torch
from torch import Tensor
from torch.nn import functional as F

SELECTIVE_FRACTIONS = tuple(round(0.1 * k, 1) for k in range(1, 11))
ROTATIONS = (15, 30, 45, 60, 75, 90)  # degrees: the rotated-(F)MNIST protocol
# severities 1, 2, 3 of each corruption, on pixels in [0, 1]: the noise's standard deviation, the
# blur's standard deviation in pixels, the contrast factor (1 leaves the image as it is)
CORRUPTIONS = {"noise": (0.1, 0.2, 0.4), "blur": (0.5, 1.0, 1.5), "contrast": (0.6, 0.4, 0.2)}


def brier(probs: Tensor, y: Tensor) -> float:
    onehot = F.one_hot(y, probs.shape[1]).to(probs.dtype)
    return (probs - onehot).pow(2).sum(1).mean().item()


def selective_accuracy(probs: Tensor, y: Tensor, fractions: Sequence[float] = SELECTIVE_FRACTIONS) -> List[float]:
    """Accuracy on the ``ceil(f N)`` most confident examples (by max probability), per fraction ``f``."""
    confidence, predicted = probs.max(1)
    right = (predicted == y).double()[torch.argsort(confidence, descending=True, stable=True)]
    return [right[: max(1, math.ceil(f * len(y)))].mean().item() for f in fractions]


def reliability(probs: Tensor, y: Tensor, bins: int = 15) -> Dict[str, List[float]]:
    """The reliability diagram's bins (``bins`` equal-width bins of the max probability, as the ECE):
    per bin the number of examples, their accuracy and their mean confidence (NaN where empty)."""
    confidence, predicted = probs.max(1)
    which = (confidence * bins).long().clamp(max=bins - 1)
    count = torch.zeros(bins, dtype=torch.float64).index_add_(0, which.cpu(), torch.ones(len(y), dtype=torch.float64))
    right = torch.zeros(bins, dtype=torch.float64).index_add_(0, which.cpu(), (predicted == y).double().cpu())
    conf = torch.zeros(bins, dtype=torch.float64).index_add_(0, which.cpu(), confidence.double().cpu())
    return {"count": count.tolist(), "accuracy": (right / count).tolist(), "confidence": (conf / count).tolist()}


def max_probability(probs: Tensor) -> Tensor:
    return probs.max(1).values


def negative_entropy(probs: Tensor) -> Tensor:
    return (probs * probs.clamp_min(1e-12).log()).sum(1)


def ood_detection(score_in: Tensor, score_out: Tensor) -> Dict[str, float]:
    """``auroc``: the probability that an in-distribution example scores higher than an
    out-of-distribution one (ties count half), the Mann-Whitney U statistic over ``n_in n_out``
    (scipy); ``fpr95``: the share of out-of-distribution examples accepted at the threshold that
    accepts 95% of the in-distribution ones (the 5% quantile of the in-distribution scores)."""
    from scipy.stats import mannwhitneyu

    a, b = score_in.double().cpu().numpy(), score_out.double().cpu().numpy()
    u = mannwhitneyu(a, b, alternative="two-sided").statistic
    threshold = torch.quantile(score_in.double().cpu(), 0.05)
    return {"auroc": float(u) / (len(a) * len(b)), "fpr95": (score_out.double().cpu() >= threshold).double().mean().item()}


def fit_temperature(log_probs: Tensor, y: Tensor) -> float:
    """The temperature ``t`` minimising the NLL of ``softmax(log_probs / t)`` (bounded search over
    ``log t`` in [-3, 3], scipy). ``log_probs`` may be any logits, or the log of averaged probabilities
    (a posterior's prediction)."""
    from scipy.optimize import minimize_scalar

    lp = log_probs.double()

    def nll(log_t: float) -> float:
        return F.cross_entropy(lp / math.exp(log_t), y).item()

    return math.exp(minimize_scalar(nll, bounds=(-3.0, 3.0), method="bounded").x)


def calibrated_nll(log_probs: Tensor, y: Tensor, temperature: float) -> float:
    return F.cross_entropy(log_probs.double() / temperature, y).item()


def rotate(images: Tensor, degrees: float, background: float = 0.0) -> Tensor:
    """``images`` (N, C, H, W) rotated by ``degrees`` counter-clockwise about the centre (bilinear),
    the corners filled with ``background`` (the value of a blank pixel)."""
    theta = math.radians(degrees)
    c, s = math.cos(theta), math.sin(theta)
    matrix = images.new_tensor([[c, -s, 0.0], [s, c, 0.0]]).expand(images.shape[0], 2, 3)
    grid = F.affine_grid(matrix, list(images.shape), align_corners=False)
    shifted = images - background  # zero padding is then the background
    return F.grid_sample(shifted, grid, mode="bilinear", padding_mode="zeros", align_corners=False) + background


def corrupt(pixels: Tensor, kind: str, severity: int, seed: int = 0) -> Tensor:
    """``pixels`` (N, C, H, W) in [0, 1] under corruption ``kind`` at ``severity`` (1, 2, 3:
    :data:`CORRUPTIONS`), clipped to [0, 1]: ``noise`` adds Gaussian noise (a fixed generator, so
    every method sees the same noisy images), ``blur`` convolves each channel with a Gaussian kernel
    (radius 3 sigma, reflected edges), ``contrast`` pulls each image towards its own mean pixel."""
    if kind not in CORRUPTIONS:
        raise ValueError(f"corrupt: kind must be one of {sorted(CORRUPTIONS)}, got {kind!r}")
    if not 1 <= severity <= len(CORRUPTIONS[kind]):
        raise ValueError(f"corrupt: severity must be in 1..{len(CORRUPTIONS[kind])}, got {severity!r}")
    level = CORRUPTIONS[kind][severity - 1]
    if kind == "noise":
        gen = torch.Generator().manual_seed(seed)
        out = pixels + level * torch.randn(pixels.shape, generator=gen, dtype=pixels.dtype).to(pixels.device)
    elif kind == "blur":
        radius = max(1, math.ceil(3 * level))
        t = torch.arange(-radius, radius + 1, dtype=pixels.dtype, device=pixels.device)
        kernel = torch.exp(-0.5 * (t / level) ** 2)
        kernel = kernel / kernel.sum()
        c = pixels.shape[1]
        out = F.pad(pixels, (radius, radius, radius, radius), mode="reflect")
        out = F.conv2d(out, kernel.view(1, 1, 1, -1).expand(c, 1, 1, -1), groups=c)  # rows, then columns
        out = F.conv2d(out, kernel.view(1, 1, -1, 1).expand(c, 1, -1, 1), groups=c)
    else:
        mean = pixels.mean(dim=(1, 2, 3), keepdim=True)
        out = (pixels - mean) * level + mean
    return out.clamp(0.0, 1.0)
