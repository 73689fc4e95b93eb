"""A small vision transformer on Fashion-MNIST (``fmnist-vit``): the second attention model of the
transformer round, in timm's layout (a fused ``qkv`` Linear ``(3d, d)``, ``proj``, ``mlp.fc1``,
``mlp.fc2``; pre-norm blocks, a class token, learned position embeddings)."""

from __future__ import annotations

from typing import Any, Dict, Optional

import torch
from torch import nn
from torch.nn import functional as F

from .base import ClassificationTask
from .fmnist import fashion_splits
from .gpt import ShakespeareGPT, orthogonal_family


class Attention(nn.Module):
    def __init__(self, d: int, heads: int):
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(d, 3 * d)  # timm's fused layout: rows [q; k; v]
        self.proj = nn.Linear(d, d)

    def forward(self, x):
        b, t, d = x.shape
        q, k, v = self.qkv(x).reshape(b, t, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        y = F.scaled_dot_product_attention(q, k, v)
        return self.proj(y.transpose(1, 2).reshape(b, t, d))


class Mlp(nn.Module):
    def __init__(self, d: int, ratio: int):
        super().__init__()
        self.fc1 = nn.Linear(d, ratio * d)
        self.fc2 = nn.Linear(ratio * d, d)

    def forward(self, x):
        return self.fc2(F.gelu(self.fc1(x)))


class Block(nn.Module):
    def __init__(self, d: int, heads: int, ratio: int):
        super().__init__()
        self.norm1, self.attn = nn.LayerNorm(d), Attention(d, heads)
        self.norm2, self.mlp = nn.LayerNorm(d), Mlp(d, ratio)

    def forward(self, x):
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class TinyViT(nn.Module):
    """ViT (Dosovitskiy et al. 2021) at Fashion-MNIST's size: 28 x 28 images cut into ``patch`` x
    ``patch`` patches, a class token read by the head."""

    def __init__(self, patch: int = 4, d: int = 64, depth: int = 4, heads: int = 4, ratio: int = 4, classes: int = 10, image: int = 28):
        super().__init__()
        self.patch_embed = nn.Conv2d(1, d, patch, stride=patch)
        tokens = (image // patch) ** 2
        self.cls_token = nn.Parameter(torch.zeros(1, 1, d))
        self.pos_embed = nn.Parameter(torch.randn(1, tokens + 1, d) * 0.02)
        self.blocks = nn.ModuleList(Block(d, heads, ratio) for _ in range(depth))
        self.norm = nn.LayerNorm(d)
        self.head = nn.Linear(d, classes)

    def forward(self, x):
        x = self.patch_embed(x).flatten(2).transpose(1, 2)
        x = torch.cat([self.cls_token.expand(len(x), -1, -1), x], dim=1) + self.pos_embed
        for block in self.blocks:
            x = block(x)
        return self.head(self.norm(x)[:, 0])


#: timm's names of the same four matrices as nanoGPT's (shakespeare-gpt's family)
TIMM_LAYERS = ("attn.qkv.weight", "attn.proj.weight", "mlp.fc1.weight", "mlp.fc2.weight")


class FashionViT(ClassificationTask):
    name = "fmnist-vit"
    description = "a small vision transformer (patches of 7, d 64, 4 blocks, timm's fused qkv) on Fashion-MNIST: the transformer round's second attention model"
    data_source = "Fashion-MNIST, Debian package dataset-fashion-mnist"
    families = ("orthogonal",)
    default_methods = ("adamw", "muon", "o-spectral", "o-spectral-project")
    presets = {
        "smoke": {"train_size": 1000, "val_size": 500, "test_size": 1000, "epochs": 1, "batch_size": 128, "eval_every": 1, "d": 32, "depth": 1, "patch": 7},
        # every training image but the validation ones, 3 epochs (1,290 steps). Patches of 7 (16
        # tokens and the class token): patches of 4 (49 tokens) cost about 0.3 s a step on one
        # core of the 2-core machine, 20 minutes a run
        "quick": {"train_size": 55000, "val_size": 5000, "test_size": 10000, "epochs": 3, "batch_size": 128, "eval_every": 1, "d": 64, "depth": 4, "patch": 7},
    }
    hparams = {
        "clip": 1.0,  # as shakespeare-gpt (nanoGPT's)
        "warmup_steps": 50,
        "min_lr_factor": 0.1,
        # every lr first transferred from shakespeare-gpt's validation grids, then confirmed by this
        # task's own (docs/results/vit/grid.md: the middle of three points for every method): AdamW
        # 3e-3 (nanoGPT's betas and weight decay), Muon 0.03, the spectral step 0.03; the AdamW part
        # of Muon's recipe and of ours (the embeddings, norms and head) takes adamw_lr too
        "adamw_lr": 3e-3, "adamw_betas": (0.9, 0.99), "adamw_wd": 0.1,
        "muon_lr": 0.03,
        "spectral_lr": 0.03,
    }

    preset_hparams = {"smoke": {"warmup_steps": 2}}

    def prepare(self) -> None:
        sizes = (self.settings["train_size"], self.settings["val_size"], self.settings["test_size"])
        (self.x_train, self.y_train), (self.x_val, self.y_val), (self.x_test, self.y_test) = fashion_splits(*sizes, self.device, flat=False)

    def build_model(self, variant: Optional[str] = None) -> nn.Module:
        return TinyViT(patch=self.settings["patch"], d=self.settings["d"], depth=self.settings["depth"])

    def constrained(self, model, family) -> Dict[str, Any]:
        assert family == "orthogonal"
        return orthogonal_family(model, TIMM_LAYERS)

    # shakespeare-gpt's: linear warm-up over warmup_steps, then cosine decay to min_lr_factor
    scheduler = ShakespeareGPT.scheduler
