"""Training with Lightning: the training plan, the sentence stream and the loss history.

The torch module (``module.py``) knows nothing of optimisers or logging; the plan owns them and
logs every variant's loss parts the same way.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import pandas as pd
import torch
from lightning.pytorch.callbacks import Callback, ModelCheckpoint
from torch.utils.data import DataLoader, IterableDataset

from ptrag_kedro.models.module import PerturbationModel
from ptrag_kedro.models.sentences import SentenceSampler
from ptrag_kedro.provenance import StaleArtefactError

logger = logging.getLogger(__name__)

#: Checkpoint key holding the data fingerprints and model config of the run.
PROVENANCE_KEY = "ptrag_provenance"


class TrainingPlan(L.LightningModule):
    """Adam on the module's loss; logs the total, the energy and (PT-RAG) the kept fraction."""

    def __init__(
        self,
        model: PerturbationModel,
        learning_rate: float,
        provenance: dict[str, str] | None = None,
    ) -> None:
        super().__init__()
        self.model = model
        self.learning_rate = learning_rate
        self.provenance = dict(provenance or {})

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        # What the run was built from, so a resume never continues on other data.
        checkpoint[PROVENANCE_KEY] = {
            **self.provenance,
            "model_config": self.model.config.to_dict(),
        }

    def training_step(self, batch: dict[str, torch.Tensor], batch_index: int) -> torch.Tensor:
        output = self.model(batch)
        loss = self.model.loss(batch, output)
        self.log("train_loss", loss.total, prog_bar=True)
        self.log("train_energy", loss.energy)
        if output.gates is not None:
            self.log("train_kept_fraction", loss.sparsity, prog_bar=True)
        return loss.total

    def validation_step(self, batch: dict[str, torch.Tensor], batch_index: int) -> None:
        output = self.model(batch)  # eval mode: deterministic gates
        self.log("val_energy", self.model.loss(batch, output).energy, prog_bar=True)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.Adam(self.model.parameters(), lr=self.learning_rate)


class SentenceStream(IterableDataset):
    """An endless stream of random training batches (Lightning stops at ``max_steps``)."""

    def __init__(self, sampler: SentenceSampler, batch_size: int, seed: int) -> None:
        self.sampler = sampler
        self.batch_size = batch_size
        self.seed = seed

    def __iter__(self):
        rng = np.random.default_rng(self.seed)
        while True:
            yield self.sampler.random_batch(self.batch_size, rng)


def validation_batches(
    sampler: SentenceSampler, batch_size: int, seed: int
) -> list[dict[str, torch.Tensor]]:
    """Every val group once, in fixed sentences: the same validation set at every check."""
    rng = np.random.default_rng(seed)
    order = np.arange(len(sampler))
    return [
        sampler.sentences(order[start : start + batch_size], rng)
        for start in range(0, len(order), batch_size)
    ]


class LossHistory(Callback):
    """Per-step training losses and per-check validation energy; saved in checkpoints."""

    def __init__(self) -> None:
        self.rows: list[dict[str, float]] = []

    def on_train_batch_end(
        self,
        trainer: L.Trainer,
        plan: L.LightningModule,
        outputs: Any,
        batch: Any,
        batch_index: int,
    ) -> None:
        metrics = trainer.callback_metrics
        row = {
            "step": trainer.global_step,
            "split": "train",
            "loss": float(metrics["train_loss"]),
            "energy": float(metrics["train_energy"]),
        }
        if "train_kept_fraction" in metrics:
            row["kept_fraction"] = float(metrics["train_kept_fraction"])
        self.rows.append(row)

    def on_validation_end(self, trainer: L.Trainer, plan: L.LightningModule) -> None:
        if trainer.sanity_checking or "val_energy" not in trainer.callback_metrics:
            return
        energy = float(trainer.callback_metrics["val_energy"])
        self.rows.append(
            {"step": trainer.global_step, "split": "val", "loss": energy, "energy": energy}
        )

    def state_dict(self) -> dict[str, Any]:
        return {"rows": self.rows}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.rows = list(state_dict["rows"])

    def frame(self) -> pd.DataFrame:
        return pd.DataFrame(self.rows, columns=["step", "split", "loss", "energy", "kept_fraction"])


def fit(
    model: PerturbationModel,
    train_sampler: SentenceSampler,
    val_sampler: SentenceSampler,
    training: dict[str, Any],
    checkpoint_dir: str | Path,
    provenance: dict[str, str] | None = None,
) -> tuple[PerturbationModel, pd.DataFrame, int]:
    """Train with Lightning; returns the trained module, the loss history and the step count.

    With ``training.resume`` and a ``last.ckpt`` in ``checkpoint_dir``, training continues from
    that checkpoint's step (model, optimiser and loss history restored), provided the checkpoint
    was made from the same data (``provenance``) and model configuration.
    """
    seed = int(training["seed"])
    L.seed_everything(seed, workers=True, verbose=False)
    checkpoint_dir = Path(checkpoint_dir)
    history = LossHistory()
    checkpoints = ModelCheckpoint(
        dirpath=checkpoint_dir,
        every_n_train_steps=int(training["checkpoint_every_n_steps"]),
        save_last=True,
        save_top_k=0 if not training.get("keep_all_checkpoints") else -1,
    )
    trainer = L.Trainer(
        max_steps=int(training["max_steps"]),
        accelerator=str(training.get("accelerator", "auto")),  # CUDA when present
        devices=training.get("devices", "auto"),
        strategy=str(training.get("strategy", "auto")),  # e.g. ddp for several GPUs
        precision="bf16-mixed" if training.get("bf16") else "32-true",
        val_check_interval=int(training["val_every_n_steps"]),
        check_val_every_n_epoch=None,
        num_sanity_val_steps=0,
        callbacks=[history, checkpoints],
        logger=False,
        enable_model_summary=False,
        enable_progress_bar=bool(training.get("progress_bar", True)),
        default_root_dir=checkpoint_dir,
    )
    last = checkpoint_dir / "last.ckpt"
    resume_from = str(last) if training.get("resume") and last.is_file() else None
    plan = TrainingPlan(model, float(training["learning_rate"]), provenance)
    if resume_from:
        _check_resumable(last, {**plan.provenance, "model_config": model.config.to_dict()})
        logger.info("Resuming from %s", resume_from)
    trainer.fit(
        plan,
        train_dataloaders=DataLoader(
            SentenceStream(train_sampler, int(training["batch_size"]), seed), batch_size=None
        ),
        val_dataloaders=DataLoader(
            validation_batches(val_sampler, int(training["batch_size"]), seed), batch_size=None
        ),
        ckpt_path=resume_from,
    )
    return plan.model.cpu().eval(), history.frame(), int(trainer.global_step)


def _check_resumable(checkpoint: Path, expected: dict[str, Any]) -> None:
    """Refuse to resume a checkpoint of another screen, other embeddings or another model."""
    recorded = torch.load(checkpoint, map_location="cpu", weights_only=True).get(PROVENANCE_KEY)
    if recorded != expected:
        differing = sorted(key for key in expected if (recorded or {}).get(key) != expected[key])
        raise StaleArtefactError(
            f"{checkpoint} was made from other inputs ({', '.join(differing)} differ); delete it "
            "or set training.resume: false to start again"
        )
