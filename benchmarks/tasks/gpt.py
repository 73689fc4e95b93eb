"""A character-level GPT on Shakespeare (nanoGPT's shape), and nGPT's normalised variant.

``CharGPT`` follows nanoGPT (Karpathy, ``model.py``): token and learned position embeddings,
pre-LayerNorm blocks of causal self-attention (one fused ``(3d, d)`` query-key-value projection, as
GPT-2's ``c_attn``) and a GELU MLP of width ``4d``, a final LayerNorm and a head tied to the token
embedding; no biases. ``NormalizedGPT`` follows nGPT (Loshchilov et al., ICLR 2025): no LayerNorm;
the embeddings and every matrix's vectors along the embedding dimension on the unit sphere; hidden
states normalised after every block, ``h <- Norm(h + alpha (Norm(block(h)) - h))`` with learned
eigen learning rates ``alpha``; queries and keys normalised per head and scaled by ``s_qk``
(softmax scale ``sqrt(d_head)``); a SwiGLU MLP with scales ``s_u``, ``s_v``; logits scaled by
``s_z``; rotary position embeddings. Its scales are stored as nGPT stores them (a parameter started
at ``scale`` and used as ``value * init / scale``), so that one lr suits them.

The task reads the text of :class:`~benchmarks.tasks.text.ShakespeareCharLM` (the same held-out
plays for validation and test) and reports bits per character and the next-character ECE.
"""

from __future__ import annotations

import math
from typing import Any, Dict, Optional, Tuple

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from .base import PRECONDITIONER_HPARAMS
from .text import ShakespeareCharLM


class CausalSelfAttention(nn.Module):
    def __init__(self, d: int, heads: int):
        super().__init__()
        self.heads = heads
        self.c_attn = nn.Linear(d, 3 * d, bias=False)  # query, key, value stacked: three d x d blocks
        self.c_proj = nn.Linear(d, d, bias=False)

    def split_heads(self, x: Tensor) -> Tensor:
        b, t, d = x.shape
        return x.view(b, t, self.heads, d // self.heads).transpose(1, 2)

    def forward(self, x: Tensor) -> Tensor:
        q, k, v = (self.split_heads(z) for z in self.c_attn(x).chunk(3, dim=-1))
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        return self.c_proj(y.transpose(1, 2).flatten(2))


class MLP(nn.Module):
    def __init__(self, d: int):
        super().__init__()
        self.c_fc = nn.Linear(d, 4 * d, bias=False)
        self.c_proj = nn.Linear(4 * d, d, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        return self.c_proj(F.gelu(self.c_fc(x)))


class Block(nn.Module):
    def __init__(self, d: int, heads: int, dropout: float):
        super().__init__()
        self.ln_1, self.attn = nn.LayerNorm(d), CausalSelfAttention(d, heads)
        self.ln_2, self.mlp = nn.LayerNorm(d), MLP(d)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: Tensor) -> Tensor:
        x = x + self.dropout(self.attn(self.ln_1(x)))
        return x + self.dropout(self.mlp(self.ln_2(x)))


class CharGPT(nn.Module):
    """nanoGPT's decoder: ``layers`` pre-LayerNorm blocks of width ``d``, context ``block``, head
    tied to the token embedding; nanoGPT's init (normal 0.02, residual projections 0.02 /
    sqrt(2 layers))."""

    def __init__(self, vocab: int, d: int, layers: int, heads: int, block: int, dropout: float = 0.0):
        super().__init__()
        self.block = block
        self.wte, self.wpe = nn.Embedding(vocab, d), nn.Embedding(block, d)
        self.drop = nn.Dropout(dropout)
        self.blocks = nn.ModuleList(Block(d, heads, dropout) for _ in range(layers))
        self.ln_f = nn.LayerNorm(d)
        self.head = nn.Linear(d, vocab, bias=False)
        self.head.weight = self.wte.weight  # weight tying
        for name, p in self.named_parameters():
            if p.ndim == 2:
                std = 0.02 / math.sqrt(2 * layers) if name.endswith("c_proj.weight") else 0.02
                nn.init.normal_(p, 0.0, std)

    def forward(self, chars: Tensor) -> Tensor:
        pos = torch.arange(chars.shape[1], device=chars.device)
        x = self.drop(self.wte(chars) + self.wpe(pos))
        for block in self.blocks:
            x = block(x)
        return self.head(self.ln_f(x))


# ---------------------------------------------------------------------------- nGPT
def _unit(x: Tensor, dim: int = -1) -> Tensor:
    return x / x.norm(dim=dim, keepdim=True).clamp_min(1e-12)


class Scale(nn.Module):
    """nGPT's learnable scale: stored as ``scale`` (so that a shared lr suits it), used as
    ``value * init / scale``."""

    def __init__(self, size: int, init: float, scale: float):
        super().__init__()
        self.init, self.scale = init, scale
        self.value = nn.Parameter(torch.full((size,), scale))

    def forward(self) -> Tensor:
        return self.value * (self.init / self.scale)


def rotary(x: Tensor) -> Tensor:
    """Rotary position embedding (Su et al. 2021) of ``(batch, heads, time, d_head)``, base 10000."""
    t, half = x.shape[-2], x.shape[-1] // 2
    freq = 10000.0 ** (-torch.arange(half, device=x.device, dtype=torch.float32) / half)
    angle = torch.arange(t, device=x.device, dtype=torch.float32)[:, None] * freq
    cos, sin = angle.cos().to(x.dtype), angle.sin().to(x.dtype)
    x1, x2 = x[..., :half], x[..., half:]
    return torch.cat([x1 * cos - x2 * sin, x1 * sin + x2 * cos], dim=-1)


class NormalizedAttention(CausalSelfAttention):
    def __init__(self, d: int, heads: int):
        super().__init__(d, heads)
        self.s_qk = Scale(d // heads, 1.0, 1.0 / math.sqrt(d))

    def forward(self, x: Tensor) -> Tensor:
        q, k, v = (self.split_heads(z) for z in self.c_attn(x).chunk(3, dim=-1))
        s = self.s_qk()
        q, k = _unit(rotary(q)) * s, _unit(rotary(k)) * s
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=math.sqrt(q.shape[-1]))
        return self.c_proj(y.transpose(1, 2).flatten(2))


class NormalizedMLP(nn.Module):
    def __init__(self, d: int):
        super().__init__()
        self.d = d
        self.c_fc = nn.Linear(d, 2 * 4 * d, bias=False)  # u and v stacked
        self.c_proj = nn.Linear(4 * d, d, bias=False)
        self.s_uv = Scale(2 * 4 * d, 1.0, 1.0)

    def forward(self, x: Tensor) -> Tensor:
        u, v = (self.c_fc(x) * self.s_uv()).chunk(2, dim=-1)
        return self.c_proj(u * F.silu(v * math.sqrt(self.d)))


class NormalizedBlock(nn.Module):
    def __init__(self, d: int, heads: int):
        super().__init__()
        self.attn, self.mlp = NormalizedAttention(d, heads), NormalizedMLP(d)
        # nGPT: alpha_init 0.05 (of order 1 / layers), stored at scale 1 / sqrt(d)
        self.alpha_attn = Scale(d, 0.05, 1.0 / math.sqrt(d))
        self.alpha_mlp = Scale(d, 0.05, 1.0 / math.sqrt(d))

    def forward(self, h: Tensor) -> Tensor:
        h = _unit(h + self.alpha_attn().abs() * (_unit(self.attn(h)) - h))
        return _unit(h + self.alpha_mlp().abs() * (_unit(self.mlp(h)) - h))


class NormalizedGPT(nn.Module):
    """nGPT: hidden states on the unit sphere. Its matrices' vectors along the embedding dimension
    (rows of the token embedding and of ``c_attn``, ``c_fc``; columns of the ``c_proj``s) belong on
    the unit sphere: the sphere family of :class:`ShakespeareGPT` names them, and nGPT's own recipe
    renormalises them after every step. The head is tied to the token embedding (nGPT unties it;
    tied here as in :class:`CharGPT`)."""

    def __init__(self, vocab: int, d: int, layers: int, heads: int, block: int):
        super().__init__()
        self.block = block
        self.wte = nn.Embedding(vocab, d)
        self.blocks = nn.ModuleList(NormalizedBlock(d, heads) for _ in range(layers))
        self.head = nn.Linear(d, vocab, bias=False)
        self.head.weight = self.wte.weight
        self.s_z = Scale(vocab, 1.0, 1.0 / math.sqrt(d))
        for p in self.parameters():
            if p.ndim == 2:
                nn.init.normal_(p, 0.0, 1.0 / math.sqrt(d))
        with torch.no_grad():
            for name, spec in sphere_family(self).items():
                p = self.get_parameter(name)
                p.copy_(_unit(p, dim=spec[1]["dim"] if spec[1]["dim"] != "rows" else 1))

    def forward(self, chars: Tensor) -> Tensor:
        h = _unit(self.wte(chars))
        for block in self.blocks:
            h = block(h)
        return self.head(h) * self.s_z()


def sphere_family(model: nn.Module) -> Dict[str, Any]:
    """nGPT's unit vectors: rows of the token embedding, ``c_attn`` and ``c_fc``; columns (``dim=0``)
    of the output projections ``c_proj``, whose columns live in the embedding space."""
    out: Dict[str, Any] = {"wte.weight": ("sphere", {"radius": 1.0, "dim": "rows"})}
    for name, _ in model.named_parameters():
        if name.endswith(("c_attn.weight", "c_fc.weight")):
            out[name] = ("sphere", {"radius": 1.0, "dim": "rows"})
        elif name.endswith("c_proj.weight"):
            out[name] = ("sphere", {"radius": 1.0, "dim": 0})
    return out


#: nanoGPT's names of the four attention-block matrices: fused Q/K/V, attention output, MLP in, MLP out
NANOGPT_LAYERS = ("attn.c_attn.weight", "attn.c_proj.weight", "mlp.c_fc.weight", "mlp.c_proj.weight")


def orthogonal_family(model: nn.Module, layers: Tuple[str, str, str, str] = NANOGPT_LAYERS) -> Dict[str, Any]:
    """The attention and MLP matrices, as square blocks where they stack several (``layers``: the
    names of the four, nanoGPT's by default): the fused ``(3d, d)`` Q/K/V as three orthogonal
    ``d x d`` blocks, the attention output ``(d, d)`` orthogonal, the MLP input ``(4d, d)`` as four
    orthogonal blocks, the MLP output ``(d, 4d)`` with orthonormal rows times 2 (its four ``d x d``
    column blocks then have singular values 1 on average, as the blocks feeding it)."""
    qkv, attn_out, mlp_in, mlp_out = layers
    out: Dict[str, Any] = {}
    for name, p in model.named_parameters():
        if name.endswith(qkv):
            out[name] = ("orthogonal", {"blocks": 3})
        elif name.endswith(attn_out):
            out[name] = "orthogonal"
        elif name.endswith(mlp_in):
            out[name] = ("orthogonal", {"blocks": p.shape[0] // p.shape[1]})
        elif name.endswith(mlp_out):
            out[name] = ("orthogonal", {"scale": 2.0})
    return out


class ShakespeareGPT(ShakespeareCharLM):
    """A decoder-only character transformer on the Shakespeare plays (validated on Macbeth, tested on
    four other held-out plays): AdamW, Muon, geotorch's orthogonal parametrisation, nGPT's normalised
    model on our sphere sets, orthogonal blocks with the adaptive mass, and the tempered sampler's
    posterior average."""

    name = "shakespeare-gpt"
    ensembles = True  # the loss and the evaluation read logits over the last dim, whatever the batch
    description = "Shakespeare's plays, character level, held-out plays; nanoGPT-style transformer (fused QKV, tied head), and nGPT's normalised variant"
    families = ("orthogonal", "sphere")
    variants = ("ngpt",)
    default_methods = (
        "adamw", "muon", "geotorch-orthogonal-adamw", "ngpt-adam", "ngpt-s-cola-ud-rms", "o-cola-ud-rms", "o-cola-ud-rms-tempered",
    )
    presets = {
        "smoke": {"steps_per_epoch": 5, "epochs": 1, "batch_size": 8, "block": 32, "d": 32, "layers": 1, "heads": 2, "dropout": 0.0, "eval_chars": 4000, "eval_every": 1},
        # sized for 2 CPU cores: about 2-3 minutes per method on one thread
        "quick": {"steps_per_epoch": 100, "epochs": 5, "batch_size": 16, "block": 128, "d": 128, "layers": 4, "heads": 4, "dropout": 0.0, "eval_chars": 60000, "eval_every": 1},
        # nanoGPT's config/train_shakespeare_char.py (6 layers, 6 heads, 384 wide, context 256, batch 64,
        # dropout 0.2, 5000 iterations, lr 1e-3 decayed to 1e-4, warm-up 100, clip 1, AdamW betas (0.9, 0.99))
        "paper": {"steps_per_epoch": 500, "epochs": 10, "batch_size": 64, "block": 256, "d": 384, "layers": 6, "heads": 6, "dropout": 0.2, "eval_chars": None, "eval_every": 1},
    }
    hparams = {
        **ShakespeareCharLM.hparams,
        **PRECONDITIONER_HPARAMS,
        "clip": 1.0,  # nanoGPT
        "warmup_steps": 20,  # nanoGPT warms up over 100 of 5000 steps; 20 of our 400 (the paper preset: 100)
        "min_lr_factor": 0.1,  # cosine decay to lr / 10 (nanoGPT)
        # AdamW as nanoGPT: betas (0.9, 0.99), weight decay 0.1 on the matrices and embeddings
        "adamw_lr": 1e-3, "adamw_betas": (0.9, 0.99), "adamw_wd": 0.1,
        # torch.optim.Muon on the attention and MLP matrices (its defaults: momentum 0.95, Nesterov,
        # 5 Newton-Schulz steps, lr adjusted by max(1, rows / cols)^0.5), AdamW (above) on the rest
        "muon_lr": 0.02,
        "ngpt_spectral_lr": 0.03,  # ngpt-s-spectral: Muon's lr (a row turns by about lr per step)
        "spectral_lr": 0.02,  # o-spectral, o-spectral-project: Muon's lr (the same step's spectral norm on square blocks)
        "geotorch_lr": 1e-3,  # AdamW through geotorch's parametrisation
        "ngpt_adam_lr": 1e-3,  # nGPT's recipe: Adam (no weight decay), the sphere's vectors renormalised after each step
        "ud_momentum": 0.9,
        "precond_lr": 1e-3,  # o-cola-ud-rms (underdamped: the step is lr * (1 - momentum) on the same footing as RMSprop's lr)
        "ngpt_rms_lr": 1e-3,  # ngpt-s-cola-ud-rms
        "temperature": 0.0,
        # the tempered sampler: T = 1 / (training characters) = 1 / 4,450,334 makes exp(-U / T) with
        # U the per-character mean loss the Bayesian posterior of the training text (with the
        # weight decay's Gaussian prior where there is one); the lr is o-cola-ud-rms's
        "posterior_temperature": 2.247e-7,
        # the posterior from converged MAP runs (map-o-cola-ud-rms, ens-o-cola-ud-rms): o-cola-ud-rms
        # with the warm-up and cosine over the first 4 epochs, then a chain for the last one at the
        # sampling stage's lr (the group's own: at o-cola-ud-rms's chosen precond_lr 0.01, which the
        # round passes, precond_lr * (1 - momentum) is 1e-3 at the peak and 1e-4 at the cosine's
        # floor; chosen on validation), T = 1 / N as above; deep ensembles of 2 members (2x a run's
        # cost) against 2 chains
        "sample_epochs": 1,
        "map_sample_lr": 1e-4,
        "map_temperature": 2.247e-7,
        "members": 2,
    }
    preset_hparams = {"paper": {"warmup_steps": 100}}

    def build_model(self, variant: Optional[str] = None) -> nn.Module:
        s = self.settings
        if variant == "ngpt":
            return NormalizedGPT(len(self.chars), s["d"], s["layers"], s["heads"], s["block"])
        assert variant is None, variant
        return CharGPT(len(self.chars), s["d"], s["layers"], s["heads"], s["block"], s["dropout"])

    def constrained(self, model, family) -> Dict[str, Any]:
        if family == "sphere":
            return sphere_family(model)
        assert family == "orthogonal", family
        return orthogonal_family(model)

    def lr_factor(self, total_steps):
        """linear warm-up over warmup_steps, then cosine decay to min_lr_factor (nanoGPT's schedule)"""
        total, warm, floor = total_steps, max(1, self.hp["warmup_steps"]), self.hp["min_lr_factor"]

        def factor(step: int) -> float:
            if step < warm:
                return (step + 1) / warm
            progress = min(1.0, (step - warm) / max(1, total - warm))
            return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress))

        return factor

    def window_length(self) -> int:
        return self.settings["block"]  # the context length

    def loss(self, model, inputs, targets):
        logits = model(inputs)
        loss = F.cross_entropy(logits.flatten(0, 1), targets.flatten())
        return loss, torch.zeros((), dtype=torch.long, device=loss.device)

    def _windows(self, ids: Tensor) -> Tuple[Tensor, Tensor]:
        """The stream cut into consecutive windows of the context length: every character is
        predicted once, from the characters before it in its window."""
        t = self.settings["block"]
        n = (len(ids) - 1) // t
        return ids[: n * t].view(n, t), ids[1 : n * t + 1].view(n, t)

    @torch.no_grad()
    def _scores(self, probs_of, ids: Tensor, bins: int = 15) -> Dict[str, float]:
        """Nats per character and the ECE of the next-character prediction (top-1 confidence in
        ``bins`` equal bins, Guo et al. 2017) over ``ids``; ``probs_of(x)`` gives probabilities."""
        x, y = self._windows(ids)
        nll = torch.zeros((), dtype=torch.float64, device=self.device)
        count = torch.zeros(bins, dtype=torch.float64, device=self.device)
        right, confident = torch.zeros_like(count), torch.zeros_like(count)
        for i in range(0, len(x), 32):
            probs = probs_of(x[i : i + 32]).double().flatten(0, 1)
            target = y[i : i + 32].flatten()
            nll -= probs.gather(1, target[:, None]).clamp_min(1e-12).log().sum()
            confidence, predicted = probs.max(1)
            which = (confidence * bins).long().clamp(max=bins - 1)
            count.index_add_(0, which, torch.ones_like(confidence))
            right.index_add_(0, which, (predicted == target).double())
            confident.index_add_(0, which, confidence)
        n = count.sum()
        return {"nats": (nll / n).item(), "ece": ((right - confident).abs().sum() / n).item(), "accuracy": (right.sum() / n).item()}

    @torch.no_grad()
    def evaluate(self, model) -> Dict[str, float]:
        """Bits per character, next-character accuracy and ECE on the validation play and on the
        test plays."""
        model.eval()
        try:
            out = {}
            for prefix, ids in (("val", self.val_ids), ("test", self.test_ids)):
                s = self._scores(lambda x: torch.softmax(model(x).double(), -1), ids)
                out.update({f"{prefix}_loss": s["nats"], f"{prefix}_bpc": s["nats"] / math.log(2), f"{prefix}_ece": s["ece"], f"{prefix}_char_accuracy": s["accuracy"]})
            return out
        finally:
            model.train()

    @torch.no_grad()
    def evaluate_posterior(self, collector) -> Dict[str, float]:
        """The same figures for the prediction averaged over the collector's snapshots."""
        out: Dict[str, float] = {"posterior_samples": len(collector)}
        for prefix, ids in (("posterior_val", self.val_ids), ("posterior", self.test_ids)):
            s = self._scores(collector.predict, ids)  # softmax over the last dim, averaged
            out.update({f"{prefix}_bpc": s["nats"] / math.log(2), f"{prefix}_ece": s["ece"], f"{prefix}_char_accuracy": s["accuracy"]})
        return out
