"""Lightning (named lightning_train.py: a script named lightning.py would shadow the package): a LightningModule whose configure_optimizers builds a constrained optimiser from
``self.parameters()``, the sets attached to the parameters with ``constrain``; gradient clipping
and a step scheduler as Lightning runs them.

    pip install "constrained-sgld[integrations]"
    python examples/lightning_train.py [--epochs 3]
"""

import argparse

import lightning.pytorch as pl
import torch

import constrained_sgld as cs


class Classifier(pl.LightningModule):
    def __init__(self):
        super().__init__()
        self.net = torch.nn.Sequential(torch.nn.Linear(20, 32), torch.nn.Tanh(), torch.nn.Linear(32, 32), torch.nn.Tanh(), torch.nn.Linear(32, 4))
        cs.constrain(self, {"net.2.weight": "orthogonal", "net.0.weight": ("sphere", {"radius": 1.0})})

    def training_step(self, batch, _):
        x, y = batch
        loss = torch.nn.functional.cross_entropy(self.net(x), y)
        self.log("loss", loss, prog_bar=False)
        return loss

    def configure_optimizers(self):
        optimiser = cs.ConstrainedUnderdampedSGLD(self.parameters(), lr=0.01, momentum=0.9, seed=0)
        schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimiser, T_max=self.trainer.estimated_stepping_batches)
        return {"optimizer": optimiser, "lr_scheduler": {"scheduler": schedule, "interval": "step"}}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=3)
    args = parser.parse_args()
    torch.manual_seed(0)
    x = torch.randn(512, 20)
    y = (x[:, :4].argmax(1))
    data = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=32, shuffle=True)
    model = Classifier()
    trainer = pl.Trainer(max_epochs=args.epochs, accelerator="cpu", logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, gradient_clip_val=1.0)
    trainer.fit(model, data)
    w = model.net[2].weight.detach()
    print(f"final loss {float(trainer.callback_metrics['loss']):.3f}; "
          f"orthogonal layer: |W^T W - I| = {(w.T @ w - torch.eye(32)).abs().max().item():.1e}; "
          f"sphere rows: |norm - 1| = {(model.net[0].weight.detach().norm(dim=1) - 1).abs().max().item():.1e}")


if __name__ == "__main__":
    main()
