"""Training with Lightning: the training plan, the sentence stream and the loss history.

The torch module (``module.py``) knows nothing of optimisers or logging; the plan owns them and
logs every variant's loss parts the same way.
"""

from __future__ import annotations

import contextlib
import copy
import logging
import pickle
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import pandas as pd
import torch
from lightning.pytorch.callbacks import Callback, ModelCheckpoint, TQDMProgressBar
from lightning.pytorch.plugins.environments import TorchElasticEnvironment
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from ptrag_kedro.errors import one_line
from ptrag_kedro.models.module import LossOutput, PerturbationModel
from ptrag_kedro.models.sentences import SentenceSampler
from ptrag_kedro.parameters import TrainingParameters
from ptrag_kedro.progress import ProgressLog
from ptrag_kedro.provenance import StaleArtefactError
from ptrag_kedro.schema import CHECKPOINT_PROVENANCE_KEY

logger = logging.getLogger(__name__)

#: Columns every loss history has; a retrieval block's extra metrics (PT-RAG's
#: ``kept_fraction``, its gate penalty ``sparsity``) follow, one column each.
HISTORY_COLUMNS = ["step", "split", "loss", "energy"]


def history_frame(rows: list[dict[str, Any]]) -> pd.DataFrame:
    """A loss history from its rows: the fixed columns, then every extra metric by name."""
    extras = sorted({name for row in rows for name in row} - set(HISTORY_COLUMNS))
    return pd.DataFrame(rows, columns=[*HISTORY_COLUMNS, *extras])


class TrainingPlan(L.LightningModule):
    """Adam on the module's loss; logs the total, the energy and the retrieval's kept fraction.

    Training step ``i`` seeds torch from (seed, i) before its forward pass, so dropout and
    PT-RAG's sampled gates depend on the step alone: a resumed run draws what an uninterrupted
    one would have drawn, whatever else consumed torch's random state in between (data-loader
    iterators, validation). With several processes (DDP) the seed is (seed, i, rank): each rank
    draws its own dropout masks and gates. Validation draws the gates from a generator seeded
    per validation batch, so the validation energy of two checks differs only because the
    weights do.

    With several processes the logged metrics are the mean over the ranks (``sync_dist``), so
    the loss history is that of the global batch; one process logs as it always has.
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
        #: the last training step's loss parts (:meth:`_step_metrics`), for the callbacks
        self.step_metrics: dict[str, torch.Tensor] = {}

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        # What the run was built from, so a resume never continues on other data.
        checkpoint[CHECKPOINT_PROVENANCE_KEY] = {
            **self.provenance,
            "model_config": self.model.config.to_dict(),
        }

    @property
    def _distributed(self) -> bool:
        return self._trainer is not None and self.trainer.world_size > 1

    def on_train_batch_start(self, batch: Any, batch_index: int) -> None:
        key = [self.seed, self.global_step]
        if self._distributed:
            key.append(self.global_rank)  # one process keeps the key it always had
        step_seed = int(np.random.SeedSequence(key).generate_state(1)[0])
        if self.device.type == "cpu":
            # The generator a CPU run draws from, and only it: torch.manual_seed also queues a
            # seed for every accelerator not yet initialised, recording a stack trace each time
            # (~2.5 ms a step, 7 % of a demo step). The same stream as torch.manual_seed.
            torch.default_generator.manual_seed(step_seed)
        else:
            torch.manual_seed(step_seed)  # the CPU and every accelerator

    def training_step(self, batch: dict[str, torch.Tensor], batch_index: int) -> torch.Tensor:
        output = self.model(batch)
        loss = self.model.loss(batch, output)
        self.step_metrics = self._step_metrics(loss)
        return loss.total

    def _step_metrics(self, loss: LossOutput) -> dict[str, torch.Tensor]:
        """The step's loss parts, detached and left on the device: ``loss``, ``energy`` and
        whatever the block reports (PT-RAG's ``kept_fraction``, ``sparsity``).

        Not through Lightning's ``self.log``, which cost ~3 ms a step on the CPU (two or four
        calls); the callbacks read these (:class:`LossHistory`, the progress line and bar) and
        copy them to the host in bulk, not each step. With several processes the parts are the
        mean over the ranks, one all-reduce of them all, as ``self.log(sync_dist=True)`` gave.
        """
        parts = {"loss": loss.total, "energy": loss.energy, **loss.extra_metrics}
        values = torch.stack([value.detach().float().reshape(()) for value in parts.values()])
        if self._distributed:
            values = self.trainer.strategy.reduce(values, reduce_op="mean")
        return dict(zip(parts, values.unbind(), strict=True))

    def validation_step(self, batch: dict[str, torch.Tensor], batch_index: int) -> None:
        device = batch[next(iter(batch))].device
        generator = torch.Generator(device=device).manual_seed(self.seed * 100_003 + batch_index)
        output = self.model(batch, generator=generator)
        # Every rank evaluates the whole validation set; syncing makes the ranks agree exactly
        # (GPU kernels may differ in the last bit), so they select the same best check.
        synced = self._distributed
        loss = self.model.loss(batch, output)
        self.log("val_energy", loss.energy, prog_bar=True, sync_dist=synced)
        for name, value in loss.extra_metrics.items():
            self.log(f"val_{name}", value, sync_dist=synced)

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
    step: a resumed run sees the batches an uninterrupted run would have seen. With ``shard =
    (rank, world_size)`` (DDP) step ``i`` draws the global batch of ``batch_size x world_size``
    sentences and yields this rank's ``batch_size`` of them: the ranks see different sentences,
    together those one process drawing the global batch would see.
    """

    def __init__(
        self,
        sampler: SentenceSampler,
        batch_size: int,
        seed: int,
        shard: tuple[int, int] = (0, 1),
    ) -> None:
        self.sampler = sampler
        self.batch_size = batch_size
        self.seed = seed
        self.shard = shard
        self.start_step = 0

    def __iter__(self):
        # With W data-loader workers, worker w draws steps start + w, start + w + W, ...; the
        # loader takes one batch from each worker in turn, so the steps arrive in order.
        worker = get_worker_info()
        step = self.start_step + (worker.id if worker else 0)
        every = worker.num_workers if worker else 1
        while True:
            rng = np.random.default_rng([self.seed, step])
            yield self.sampler.random_batch(self.batch_size, rng, shard=self.shard)
            step += every


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
    """Per-step training losses and per-check validation energy, with every extra metric the
    model's loss reports (``train_<name>`` / ``val_<name>``); saved in checkpoints.

    A step's parts stay on the device until :data:`HOST_COPY_EVERY` steps have gathered (or a
    check, a checkpoint or the end of training comes), then come to the host in one copy: on a
    GPU, reading each step's loss would wait for that step to finish, every step.
    """

    #: training steps whose parts are copied to the host together
    HOST_COPY_EVERY = 100

    def __init__(self) -> None:
        self.rows: list[dict[str, Any]] = []
        self._pending: list[tuple[int, dict[str, torch.Tensor]]] = []

    @staticmethod
    def _extras(metrics: dict[str, Any], prefix: str) -> dict[str, float]:
        fixed = {f"{prefix}loss", f"{prefix}energy"}
        return {
            name.removeprefix(prefix): float(value)
            for name, value in metrics.items()
            if name.startswith(prefix) and name not in fixed
        }

    def _copy_to_host(self) -> None:
        """The pending steps' parts as rows, in one device-to-host copy."""
        if not self._pending:
            return
        values = torch.stack([torch.stack(list(parts.values())) for _, parts in self._pending])
        for (step, parts), row in zip(self._pending, values.cpu().tolist(), strict=True):
            named = dict(zip(parts, row, strict=True))
            loss, energy = named.pop("loss"), named.pop("energy")
            self.rows.append({"step": step, "split": "train", "loss": loss, "energy": energy})
            self.rows[-1].update(named)
        self._pending = []

    def on_train_batch_end(
        self, trainer: L.Trainer, plan: L.LightningModule, outputs: Any, batch: Any, index: int
    ) -> None:
        self._pending.append((trainer.global_step, plan.step_metrics))
        if len(self._pending) >= self.HOST_COPY_EVERY:
            self._copy_to_host()

    def on_validation_end(self, trainer: L.Trainer, plan: L.LightningModule) -> None:
        self._copy_to_host()  # the rows stay in step order
        if trainer.sanity_checking or "val_energy" not in trainer.callback_metrics:
            return
        metrics = trainer.callback_metrics
        energy = float(metrics["val_energy"])
        self.rows.append(
            {
                "step": trainer.global_step,
                "split": "val",
                "loss": energy,
                "energy": energy,
                **self._extras(metrics, "val_"),
            }
        )

    def on_train_end(self, trainer: L.Trainer, plan: L.LightningModule) -> None:
        self._copy_to_host()

    def state_dict(self) -> dict[str, Any]:
        self._copy_to_host()  # a checkpoint holds every step so far
        return {"rows": self.rows}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.rows = list(state_dict["rows"])
        self._pending = []

    def frame(self) -> pd.DataFrame:
        self._copy_to_host()
        return history_frame(self.rows)


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


class StepCheckpoint(ModelCheckpoint):
    """Lightning's checkpoint every N steps, written after the validation of the same step.

    Lightning writes a step's checkpoint before that step's validation and, resumed from it,
    skips that validation: the resumed run's loss history and best weights would miss the check
    (with the defaults, every checkpoint step is a validation step). Deferred here to the end of
    that validation, the checkpoint holds the check, and Lightning's restart knows validation
    already ran. Uses ModelCheckpoint's own deferral flag (lightning is pinned; a test holds a
    resume from such a step to an uninterrupted run).
    """

    def __init__(self, val_every_n_steps: int | None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.val_every_n_steps = val_every_n_steps  # None: there is no validation to wait for

    def on_train_batch_end(
        self, trainer: L.Trainer, plan: L.LightningModule, outputs: Any, batch: Any, index: int
    ) -> None:
        step = trainer.global_step
        every = self._every_n_train_steps
        validates = self.val_every_n_steps and step % self.val_every_n_steps == 0
        if every >= 1 and step % every == 0 and validates:
            self._defer_save_until_validation = True
            return
        super().on_train_batch_end(trainer, plan, outputs, batch, index)


class ProgressLines(Callback):
    """A log line every ``every`` steps and at the last: step / max_steps, the mean training
    loss since the previous line, the latest val energy and steps per second.

    For output that is not a terminal (a log file, SLURM, CI), where a progress bar shows
    nothing until it ends. Reads the metrics the plan logs anyway; the global rank 0 logs.
    """

    def __init__(self, task: str, every: int) -> None:
        self.task, self.every = task, every
        self._progress: ProgressLog | None = None
        # The losses since the last line, summed where they are (a GPU tensor): read back to
        # the host only when a line is due, not every step.
        self._loss_sum: torch.Tensor | float = 0.0
        self._losses = 0
        self._val = "none yet"

    def on_train_start(self, trainer: L.Trainer, plan: L.LightningModule) -> None:
        # A resumed run starts at its checkpoint's step.
        self._progress = ProgressLog(
            logger, self.task, trainer.max_steps, "steps", self.every, done=trainer.global_step
        )

    def on_train_batch_end(
        self, trainer: L.Trainer, plan: L.LightningModule, outputs: Any, batch: Any, index: int
    ) -> None:
        if self._progress is None or not trainer.is_global_zero:
            return
        self._loss_sum = self._loss_sum + plan.step_metrics["loss"]
        self._losses += 1
        step = trainer.global_step
        if not self._progress.due(step):
            self._progress.update(step)
            return
        loss = f"{float(self._loss_sum) / self._losses:.4g}"
        self._progress.update(step, loss=loss, **{"val energy": self._val})
        self._loss_sum, self._losses = 0.0, 0

    def on_validation_end(self, trainer: L.Trainer, plan: L.LightningModule) -> None:
        if not trainer.sanity_checking and "val_energy" in trainer.callback_metrics:
            energy = float(trainer.callback_metrics["val_energy"])
            self._val = f"{energy:.4g} (step {trainer.global_step})"


class StepProgressBar(TQDMProgressBar):
    """Lightning's bar in steps: ``Training`` n / max_steps. Training is step-based
    (``max_epochs = -1``), which Lightning's own bar shows as ``Epoch 0/-2``."""

    def on_train_epoch_start(self, trainer: L.Trainer, *args: Any) -> None:
        # Replaces Lightning's, which names the epoch; the one epoch here is the whole run.
        bar = self.train_progress_bar
        bar.reset(total=trainer.max_steps)
        bar.initial = bar.n = trainer.global_step  # a resumed run starts at its step

    def on_train_batch_end(
        self, trainer: L.Trainer, plan: L.LightningModule, outputs: Any, batch: Any, index: int
    ) -> None:
        step = trainer.global_step
        if self._should_update(step, trainer.max_steps):
            self.train_progress_bar.n = step
            metrics = self.get_metrics(trainer, plan)  # what is logged: the val energy
            if plan.step_metrics:
                metrics = {"train_loss": f"{float(plan.step_metrics['loss']):.3g}", **metrics}
            self.train_progress_bar.set_postfix(metrics)


def progress_callback(training: TrainingParameters, task: str, stream: Any = None) -> Callback:
    """The bar when ``training.progress_bar`` and the bar's stream (stdout) is a terminal;
    otherwise a log line every ``training.log_every_n_steps`` steps."""
    stream = sys.stdout if stream is None else stream
    if training.progress_bar and stream.isatty():
        return StepProgressBar()
    return ProgressLines(task, training.log_every_n_steps)


@dataclass
class FitResult:
    """A trained module (the selected weights), its loss history and how it was selected."""

    model: PerturbationModel
    history: pd.DataFrame
    steps: int
    selected_step: int
    selected_val_energy: float | None


def _trainer(
    training: TrainingParameters,
    checkpoint_dir: Path,
    callbacks: list[Callback],
    validates: bool = True,
    task: str = "Training",
) -> L.Trainer:
    processes = training.processes_per_node()
    if processes * training.num_nodes > 1 and not TorchElasticEnvironment.detect():
        # Lightning's own launcher would re-run this command line (`kedro run`) in every rank.
        raise RuntimeError(
            "training on several processes runs under torchrun: train through the training "
            "node (ptrag_kedro.models.distributed.fit_on_processes), not fit() directly"
        )
    checkpoints = StepCheckpoint(
        training.val_every_n_steps if validates else None,
        dirpath=checkpoint_dir,
        every_n_train_steps=training.checkpoint_every_n_steps,
        save_last=True,
        save_top_k=-1 if training.keep_all_checkpoints else 0,
    )
    progress = progress_callback(training, task)
    return L.Trainer(
        max_steps=training.max_steps,
        accelerator=training.accelerator,  # CUDA when present
        # Resolved here, never Lightning's "auto": with several GPUs Lightning would re-run the
        # command line (`kedro run`) in each; several processes are started by torchrun
        # (ptrag_kedro.models.distributed), which Lightning detects and joins.
        devices=processes,
        num_nodes=training.num_nodes,
        strategy=training.strategy,  # ddp under torchrun
        # Our stream shards itself per rank and every rank validates on the whole val set.
        use_distributed_sampler=False,
        precision="bf16-mixed" if training.bf16 else "32-true",
        val_check_interval=training.val_every_n_steps,
        check_val_every_n_epoch=None,
        num_sanity_val_steps=0,
        callbacks=[*callbacks, checkpoints, progress],
        logger=False,
        enable_model_summary=False,
        enable_progress_bar=isinstance(progress, StepProgressBar),
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
    callbacks: Sequence[Callback] = (),
) -> FitResult:
    """Train with Lightning; returns the selected weights, the loss history and the steps.

    ``callbacks`` are added to the trainer's own (benchmarks time the steps with one).

    With ``training.select_on_val`` the returned weights are those of the validation check with
    the lowest val energy (the last step's when there was no check). With ``training.resume`` and
    a ``last.ckpt`` in ``checkpoint_dir``, training continues from that checkpoint's step (model,
    optimiser, loss history, best weights, random state and the sentence stream's position
    restored: the resumed run equals an uninterrupted one), provided the checkpoint was made
    from the same data (``provenance``) and model configuration.

    Run in every process of a torchrun launch (``ptrag_kedro.models.distributed``), this is
    DDP: ``training.batch_size`` sentences per rank, each rank its own share of the global
    batch; the returned result is the same in every rank.
    """
    L.seed_everything(seed, workers=True, verbose=False)
    checkpoint_dir = Path(checkpoint_dir)
    history, best = LossHistory(), BestOnValidation()
    val_batches = validation_batches(val_sampler, training.batch_size, seed)
    trainer = _trainer(
        training,
        checkpoint_dir,
        [history, best, *callbacks],
        validates=bool(val_batches),
        task=f"Training, retrieval {model.config.retrieval} (seed {seed})",
    )
    shard = (trainer.global_rank, trainer.world_size)
    stream = SentenceStream(train_sampler, training.batch_size, seed, shard=shard)
    last = checkpoint_dir / "last.ckpt"
    resume_from = str(last) if training.resume and last.is_file() else None
    if training.resume and resume_from is None:
        if training.resume == "must":
            raise StaleArtefactError(
                f"training.resume is must, but {last} does not exist: train without resume first"
            )
        logger.info("training.resume: no checkpoint at %s, so training starts at step 0", last)
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
                stream,
                batch_size=None,
                pin_memory=torch.cuda.is_available(),
                num_workers=training.loader_workers,
            ),
            val_dataloaders=DataLoader(val_batches, batch_size=None),
            ckpt_path=resume_from,
        )
    return _result(plan.model.cpu().eval(), history, best, int(trainer.global_step), training)


def _result(
    trained: PerturbationModel,
    history: LossHistory,
    best: BestOnValidation,
    steps: int,
    training: TrainingParameters,
) -> FitResult:
    """The last weights, or with ``select_on_val`` those of the best validation check."""
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
    try:
        stored = torch.load(checkpoint, map_location="cpu", weights_only=True)
    except (OSError, RuntimeError, EOFError, pickle.UnpicklingError) as error:
        raise StaleArtefactError(
            f"{checkpoint}: not a readable checkpoint ({one_line(error, 200)}); delete it or set "
            "training.resume: false to start again"
        ) from error
    recorded = stored.get(CHECKPOINT_PROVENANCE_KEY)
    if recorded != expected:
        differing = sorted(key for key in expected if (recorded or {}).get(key) != expected[key])
        raise StaleArtefactError(
            f"{checkpoint} was made from other inputs ({', '.join(differing)} differ); delete it "
            "or set training.resume: false to start again"
        )
    return int(stored["global_step"])
