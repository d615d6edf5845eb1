"""Training with Lightning: the training plan, the sentence stream and the loss history.

The torch module (``module.py``) knows nothing of optimisers or logging; the plan owns them and
logs every variant's loss parts the same way.
"""

from __future__ import annotations

import contextlib
import copy
import logging
from collections.abc import Iterator
from dataclasses import dataclass
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
from ptrag_kedro.parameters import TrainingParameters
from ptrag_kedro.provenance import StaleArtefactError
from ptrag_kedro.schema import CHECKPOINT_PROVENANCE_KEY

logger = logging.getLogger(__name__)

HISTORY_COLUMNS = ["step", "split", "loss", "energy", "kept_fraction"]


class TrainingPlan(L.LightningModule):
    """Adam on the module's loss; logs the total, the energy and the retrieval's kept fraction.

    Training step ``i`` seeds torch from (seed, i) before its forward pass, so dropout and
    PT-RAG's sampled gates depend on the step alone: a resumed run draws what an uninterrupted
    one would have drawn, whatever else consumed torch's random state in between (data-loader
    iterators, validation). Validation draws the gates from a generator seeded per validation
    batch, so the validation energy of two checks differs only because the weights do.
    """

    def __init__(
        self,
        model: PerturbationModel,
        learning_rate: float,
        provenance: dict[str, str] | None = None,
        seed: int = 0,
    ) -> None:
        super().__init__()
        self.model = model
        self.learning_rate = learning_rate
        self.provenance = dict(provenance or {})
        self.seed = seed

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        # What the run was built from, so a resume never continues on other data.
        checkpoint[CHECKPOINT_PROVENANCE_KEY] = {
            **self.provenance,
            "model_config": self.model.config.to_dict(),
        }

    def on_train_batch_start(self, batch: Any, batch_index: int) -> None:
        step_seed = np.random.SeedSequence([self.seed, self.global_step]).generate_state(1)[0]
        torch.manual_seed(int(step_seed))  # all devices

    def training_step(self, batch: dict[str, torch.Tensor], batch_index: int) -> torch.Tensor:
        output = self.model(batch)
        loss = self.model.loss(batch, output)
        self.log("train_loss", loss.total, prog_bar=True)
        self.log("train_energy", loss.energy)
        if output.kept_fraction is not None:
            self.log("train_kept_fraction", output.kept_fraction, prog_bar=True)
        return loss.total

    def validation_step(self, batch: dict[str, torch.Tensor], batch_index: int) -> None:
        device = batch[next(iter(batch))].device
        generator = torch.Generator(device=device).manual_seed(self.seed * 100_003 + batch_index)
        output = self.model(batch, generator=generator)
        self.log("val_energy", self.model.loss(batch, output).energy, prog_bar=True)
        if output.kept_fraction is not None:
            self.log("val_kept_fraction", output.kept_fraction)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        # One fused kernel over all parameters rather than ~10 small ops per tensor: the same
        # update (a test holds it to the loop); 13.2 -> 11.1 s per 300 demo steps in one
        # measurement on 2 CPU cores, within the noise of a whole demo run.
        return torch.optim.Adam(self.model.parameters(), lr=self.learning_rate, fused=True)


@contextlib.contextmanager
def denormals_flushed() -> Iterator[None]:
    """Flush denormal floats to zero (CPU) for the duration: training runs inside this.

    Adam's second-moment estimate of a small gradient (PT-RAG's straight-through gate gradients
    squared reach ~1e-40) falls below float32's normal range, where x86 arithmetic is about 100x
    slower: at the paper's shapes that made PT-RAG's optimiser step cost more than its forward
    and backward passes. Flushing changes only values below 1.2e-38 (a test holds training with
    it to training without). Restored to torch's default (off) afterwards.
    """
    supported = torch.set_flush_denormal(True)
    try:
        yield
    finally:
        if supported:
            torch.set_flush_denormal(False)


class SentenceStream(IterableDataset):
    """An endless stream of random training batches (Lightning stops at ``max_steps``).

    Batch ``i`` is drawn from a generator seeded by (seed, i), so the stream can start at any
    step: a resumed run sees the batches an uninterrupted run would have seen.
    """

    def __init__(self, sampler: SentenceSampler, batch_size: int, seed: int) -> None:
        self.sampler = sampler
        self.batch_size = batch_size
        self.seed = seed
        self.start_step = 0

    def __iter__(self):
        step = self.start_step
        while True:
            yield self.sampler.random_batch(
                self.batch_size, np.random.default_rng([self.seed, step])
            )
            step += 1


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
        self, trainer: L.Trainer, plan: L.LightningModule, outputs: Any, batch: Any, index: int
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
        metrics = trainer.callback_metrics
        energy = float(metrics["val_energy"])
        row = {"step": trainer.global_step, "split": "val", "loss": energy, "energy": energy}
        if "val_kept_fraction" in metrics:
            row["kept_fraction"] = float(metrics["val_kept_fraction"])
        self.rows.append(row)

    def state_dict(self) -> dict[str, Any]:
        return {"rows": self.rows}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.rows = list(state_dict["rows"])

    def frame(self) -> pd.DataFrame:
        return pd.DataFrame(self.rows, columns=HISTORY_COLUMNS)


class BestOnValidation(Callback):
    """Keeps a copy of the weights of the validation check with the lowest val energy.

    Its state (the copy, its step and energy) is saved in checkpoints, so a resumed run still
    knows the best weights it had seen.
    """

    def __init__(self) -> None:
        self.best_energy = float("inf")
        self.best_step = -1
        self.best_weights: dict[str, torch.Tensor] | None = None

    def on_validation_end(self, trainer: L.Trainer, plan: L.LightningModule) -> None:
        if trainer.sanity_checking or "val_energy" not in trainer.callback_metrics:
            return
        energy = float(trainer.callback_metrics["val_energy"])
        if energy < self.best_energy:
            self.best_energy, self.best_step = energy, int(trainer.global_step)
            self.best_weights = {
                name: tensor.detach().cpu().clone()
                for name, tensor in plan.model.state_dict().items()
            }

    def state_dict(self) -> dict[str, Any]:
        return {
            "best_energy": self.best_energy,
            "best_step": self.best_step,
            "best_weights": self.best_weights,
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.best_energy = float(state_dict["best_energy"])
        self.best_step = int(state_dict["best_step"])
        self.best_weights = state_dict["best_weights"]


@dataclass
class FitResult:
    """A trained module (the selected weights), its loss history and how it was selected."""

    model: PerturbationModel
    history: pd.DataFrame
    steps: int
    selected_step: int
    selected_val_energy: float | None


def _trainer(
    training: TrainingParameters, checkpoint_dir: Path, callbacks: list[Callback]
) -> L.Trainer:
    checkpoints = ModelCheckpoint(
        dirpath=checkpoint_dir,
        every_n_train_steps=training.checkpoint_every_n_steps,
        save_last=True,
        save_top_k=-1 if training.keep_all_checkpoints else 0,
    )
    return L.Trainer(
        max_steps=training.max_steps,
        accelerator=training.accelerator,  # CUDA when present
        devices=training.devices,
        strategy=training.strategy,  # e.g. ddp for several GPUs
        precision="bf16-mixed" if training.bf16 else "32-true",
        val_check_interval=training.val_every_n_steps,
        check_val_every_n_epoch=None,
        num_sanity_val_steps=0,
        callbacks=[*callbacks, checkpoints],
        logger=False,
        enable_model_summary=False,
        enable_progress_bar=training.progress_bar,
        default_root_dir=checkpoint_dir,
    )


def fit(
    model: PerturbationModel,
    train_sampler: SentenceSampler,
    val_sampler: SentenceSampler,
    training: TrainingParameters,
    seed: int,
    checkpoint_dir: str | Path,
    provenance: dict[str, str] | None = None,
) -> FitResult:
    """Train with Lightning; returns the selected weights, the loss history and the steps.

    With ``training.select_on_val`` the returned weights are those of the validation check with
    the lowest val energy (the last step's when there was no check). With ``training.resume`` and
    a ``last.ckpt`` in ``checkpoint_dir``, training continues from that checkpoint's step (model,
    optimiser, loss history, best weights, random state and the sentence stream's position
    restored: the resumed run equals an uninterrupted one), provided the checkpoint was made
    from the same data (``provenance``) and model configuration.
    """
    L.seed_everything(seed, workers=True, verbose=False)
    checkpoint_dir = Path(checkpoint_dir)
    history, best = LossHistory(), BestOnValidation()
    stream = SentenceStream(train_sampler, training.batch_size, seed)
    trainer = _trainer(training, checkpoint_dir, [history, best])
    last = checkpoint_dir / "last.ckpt"
    resume_from = str(last) if training.resume and last.is_file() else None
    if training.compile:
        model.compile()  # in place: the forward is compiled, parameter names stay the same
    plan = TrainingPlan(model, training.learning_rate, provenance, seed=seed)
    if resume_from:
        # Lightning pulls the first batch before any hook sees the restored step, so the
        # stream's position is set from the checkpoint here.
        stream.start_step = _resumable_step(
            last, {**plan.provenance, "model_config": model.config.to_dict()}
        )
        logger.info("Resuming from %s at step %d", resume_from, stream.start_step)
    with denormals_flushed():
        trainer.fit(
            plan,
            # pinned host memory: asynchronous host-to-GPU copies of each batch
            train_dataloaders=DataLoader(
                stream, batch_size=None, pin_memory=torch.cuda.is_available()
            ),
            val_dataloaders=DataLoader(
                validation_batches(val_sampler, training.batch_size, seed), batch_size=None
            ),
            ckpt_path=resume_from,
        )
    trained = plan.model.cpu().eval()
    steps = int(trainer.global_step)
    if training.select_on_val and best.best_weights is not None:
        trained = copy.deepcopy(trained)
        trained.load_state_dict(best.best_weights)
        logger.info(
            "Selected the weights of step %d of %d (val energy %.4f)",
            best.best_step,
            steps,
            best.best_energy,
        )
        return FitResult(trained, history.frame(), steps, best.best_step, best.best_energy)
    return FitResult(trained, history.frame(), steps, steps, None)


def _resumable_step(checkpoint: Path, expected: dict[str, Any]) -> int:
    """The checkpoint's step; refuses a checkpoint of another screen, embeddings or model."""
    stored = torch.load(checkpoint, map_location="cpu", weights_only=True)
    recorded = stored.get(CHECKPOINT_PROVENANCE_KEY)
    if recorded != expected:
        differing = sorted(key for key in expected if (recorded or {}).get(key) != expected[key])
        raise StaleArtefactError(
            f"{checkpoint} was made from other inputs ({', '.join(differing)} differ); delete it "
            "or set training.resume: false to start again"
        )
    return int(stored["global_step"])
