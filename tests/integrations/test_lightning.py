"""Lightning, for real: a LightningModule whose configure_optimizers builds the optimiser from
bare ``self.parameters()`` tagged by ``constrain``; fit with gradient clipping and a step
scheduler keeps the sets, and resuming from a checkpoint continues bit for bit."""

import pytest
import torch

import constrained_sgld as cs

pl = pytest.importorskip("lightning.pytorch")

pytestmark = pytest.mark.filterwarnings("ignore")


class Net(pl.LightningModule):
    def __init__(self, cls):
        super().__init__()
        self.cls = cls
        torch.manual_seed(0)
        self.body = torch.nn.Sequential(torch.nn.Linear(8, 8), torch.nn.Tanh(), torch.nn.Linear(8, 3))
        cs.constrain(self, {"body.0.weight": "orthogonal", "body.2.weight": ("sphere", {"radius": 2.0})})

    def training_step(self, batch, _):
        x, y = batch
        return torch.nn.functional.cross_entropy(self.body(x), y)

    def configure_optimizers(self):
        extra = {"momentum": 0.9} if self.cls is not cs.ConstrainedSGLD else {}
        opt = self.cls(self.parameters(), lr=1e-2, temperature=1e-4, seed=0, **extra)
        sched = torch.optim.lr_scheduler.StepLR(opt, 4, gamma=0.5)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}


def _data():
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(64, 8, generator=g), torch.randint(0, 3, (64,), generator=g)
    return torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=8)


def _trainer(tmp_path, epochs):
    return pl.Trainer(max_epochs=epochs, accelerator="cpu", devices=1, logger=False, enable_progress_bar=False,
                      enable_model_summary=False, gradient_clip_val=0.5, default_root_dir=str(tmp_path), deterministic=True)


@pytest.mark.parametrize("cls", [cs.ConstrainedSGLD, cs.ConstrainedUnderdampedSGLD, cs.ConstrainedSGNHT])
def test_tagged_parameters_keep_their_sets_through_fit_and_resume_bit_for_bit(tmp_path, cls):
    uninterrupted = Net(cls)
    _trainer(tmp_path, 4).fit(uninterrupted, _data())
    w = uninterrupted.body[0].weight.detach()
    torch.testing.assert_close(w.T @ w, torch.eye(8), atol=1e-5, rtol=0)
    torch.testing.assert_close(uninterrupted.body[2].weight.detach().norm(dim=1), torch.full((3,), 2.0))
    first = Net(cls)
    trainer = _trainer(tmp_path, 2)
    trainer.fit(first, _data())
    checkpoint = tmp_path / "after-2.ckpt"
    trainer.save_checkpoint(str(checkpoint))
    resumed = Net(cls)
    _trainer(tmp_path, 4).fit(resumed, _data(), ckpt_path=str(checkpoint))
    for a, b in zip(uninterrupted.parameters(), resumed.parameters()):
        assert torch.equal(a, b)
