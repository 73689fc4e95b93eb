"""timm, for real: a ViT built from a config (no download), its fused ``qkv`` constrained per block
(Q, K and V each orthogonal) and its MLP's ``fc1`` per square block, by ``constrain`` tags; the
optimiser comes from timm's own factory, ``create_optimizer_v2``, which hands it bare parameters in
weight-decay groups (the tagged route). Training keeps every block on its set, and a rebuilt
optimiser resumed from ``state_dict`` continues bit for bit.

timm needs torchvision, whose PyPI build matches only its own torch: CI runs this file in a second
virtual environment with ``torch==2.14.1 torchvision==0.29.1 timm`` (.ci/run; README's test section).
"""

import copy

import pytest
import torch

import constrained_sgld as cs

timm = pytest.importorskip("timm")
from timm.optim import OptimInfo, create_optimizer_v2, get_optimizer_info  # noqa: E402
from timm.optim._optim_factory import default_registry  # noqa: E402  (timm's registry: no public register function)

pytestmark = pytest.mark.filterwarnings("ignore")

D, HEADS, DEPTH = 48, 3, 2
SCHEMES = {
    "csgld": (cs.ConstrainedSGLD, False),
    "csgld-underdamped": (cs.ConstrainedUnderdampedSGLD, True),
    "csgnht": (cs.ConstrainedSGNHT, True),
}


def _register():
    for name, (cls, momentum) in SCHEMES.items():
        try:
            get_optimizer_info(name)
        except ValueError:
            default_registry.register(OptimInfo(name=name, opt_class=cls, description=cls.__doc__.splitlines()[0], has_eps=False, has_momentum=momentum))


def _vit():
    torch.manual_seed(0)
    model = timm.create_model(
        "vit_tiny_patch16_224", pretrained=False, img_size=16, patch_size=4, in_chans=1, num_classes=5,
        embed_dim=D, depth=DEPTH, num_heads=HEADS,
    )
    cs.constrain(model, {"*.attn.qkv.weight": ("orthogonal", {"blocks": 3}), "*.mlp.fc1.weight": ("orthogonal", {"blocks": 4})})
    return model


def _optimizer(model, name):
    extra = {"momentum": 0.9} if SCHEMES[name][1] else {}
    return create_optimizer_v2(model, opt=name, lr=0.02, weight_decay=0.05, temperature=1e-5, seed=0, **extra)


def _train(model, optim, steps, start=0):
    for step in range(start, start + steps):
        g = torch.Generator().manual_seed(step)
        x, y = torch.randn(8, 1, 16, 16, generator=g), torch.randint(0, 5, (8,), generator=g)
        optim.zero_grad()
        torch.nn.functional.cross_entropy(model(x), y).backward()
        optim.step()


@pytest.mark.parametrize("name", sorted(SCHEMES))
def test_timm_factory_keeps_qkv_blocks_orthogonal_and_resumes_bit_for_bit(name):
    _register()
    model = _vit()
    optim = _optimizer(model, name)
    assert isinstance(optim, SCHEMES[name][0])
    # timm's weight-decay split (decay on matrices, none on biases, norms and embeddings) kept; its
    # decay group split further by set, one set per group
    assert {g["weight_decay"] for g in optim.param_groups} == {0.0, 0.05}
    tagged = {id(b.attn.qkv.weight) for b in model.blocks} | {id(b.mlp.fc1.weight) for b in model.blocks}
    assert all(g["weight_decay"] == 0.05 for g in optim.param_groups for p in g["params"] if id(p) in tagged)
    first = {n: p.detach().clone() for n, p in model.named_parameters()}
    _train(model, optim, 4)
    for block in model.blocks:
        for w, parts in ((block.attn.qkv.weight, 3), (block.mlp.fc1.weight, 4)):
            for piece in w.detach().chunk(parts, dim=0):  # Q, K, V (nn.Linear's (out, in) layout): each (D, D)
                torch.testing.assert_close(piece @ piece.T, torch.eye(D), atol=1e-5, rtol=0)
    assert max(float(v) for v in optim.violations()) < 1e-5
    assert all(not torch.equal(first[n], p) for n, p in model.named_parameters() if n.endswith("qkv.weight"))

    # resume: a fresh model and a fresh optimiser from the factory, their states loaded
    # (copies, as a checkpoint on disk: state_dict() shares the momentum buffers that the next steps update)
    saved_model, saved_optim = copy.deepcopy(model.state_dict()), copy.deepcopy(optim.state_dict())
    _train(model, optim, 3, start=4)
    resumed = _vit()
    resumed.load_state_dict(saved_model)
    optim2 = _optimizer(resumed, name)
    optim2.load_state_dict(saved_optim)
    _train(resumed, optim2, 3, start=4)
    for (n, a), b in zip(model.named_parameters(), resumed.parameters()):
        assert torch.equal(a, b), n
