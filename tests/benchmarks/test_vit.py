"""The fmnist-vit task's model (timm's layout) and its orthogonal family: Q, K and V are the blocks
of the fused ``qkv``, and every method of its round keeps them orthogonal."""

import pytest
import torch

from benchmarks.methods import METHODS, largest_violation
from benchmarks.tasks.gpt import orthogonal_family
from benchmarks.tasks.vit import TIMM_LAYERS, FashionViT, TinyViT


def test_the_model_has_timms_fused_qkv_and_the_family_splits_it_into_q_k_v():
    model = TinyViT(d=16, depth=2, heads=2)
    assert model.blocks[0].attn.qkv.weight.shape == (48, 16)
    family = orthogonal_family(model, TIMM_LAYERS)
    assert family["blocks.0.attn.qkv.weight"] == ("orthogonal", {"blocks": 3})
    assert family["blocks.1.mlp.fc1.weight"] == ("orthogonal", {"blocks": 4})
    assert family["blocks.1.mlp.fc2.weight"] == ("orthogonal", {"scale": 2.0})
    assert "patch_embed.weight" not in family and "head.weight" not in family
    assert model(torch.randn(3, 1, 28, 28)).shape == (3, 10)


class _RandomImages(FashionViT):
    """The task on random images (no download): the methods' mechanics only."""

    def prepare(self):
        g = torch.Generator().manual_seed(0)
        self.x_train, self.y_train = torch.randn(64, 1, 28, 28, generator=g), torch.randint(0, 10, (64,), generator=g)
        self.x_val, self.y_val = self.x_train[:16], self.y_train[:16]
        self.x_test, self.y_test = self.x_val, self.y_val


@pytest.mark.parametrize("name", ["o-spectral", "o-spectral-project", "muon", "adamw"])
def test_the_round_methods_train_and_keep_q_k_v_orthogonal(name):
    task = _RandomImages("smoke", torch.device("cpu"), {"batch_size": 16})
    task.prepare()
    method = METHODS[name]
    assert method.applies_to(task)
    torch.manual_seed(0)
    model = task.build_model()
    optimizer, _, constraints = method.build(model, task, 0)
    for x, y in task.batches(torch.Generator().manual_seed(0)):
        optimizer.zero_grad()
        task.loss(model, x, y)[0].backward()
        optimizer.step()
    if constraints:
        qkv = model.blocks[0].attn.qkv.weight.detach()
        for block in qkv.reshape(3, qkv.shape[1], qkv.shape[1]):
            assert torch.allclose(block.T @ block, torch.eye(qkv.shape[1]), atol=1e-4)
        assert largest_violation(model, optimizer, constraints) < 1e-4
