"""Typed parameter blocks: declared once here, validated when Kedro builds the run.

Kedro instantiates a dataclass-typed node parameter from its ``params:`` dict before any node
runs, so a wrong value stops the run at its start with the parameter's name; an unknown key is
an error too (a misspelt option must not be silently ignored).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, get_args

from ptrag_kedro.errors import ParameterError
from ptrag_kedro.models.config import ModelConfig, check_model_options

__all__ = ["ParameterError"]  # re-exported: the error every check here raises

logger = logging.getLogger(__name__)


def _set(instance: Any, name: str, value: Any) -> None:
    object.__setattr__(instance, name, value)  # normalising a frozen dataclass in __post_init__


def _require(condition: bool, message: str) -> None:
    if not condition:
        raise ParameterError(message)


def _positive_integer(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 1


def _require_integer(name: str, value: Any, minimum: int) -> None:
    """``name`` must be an integer (not a float, a string or a bool) of at least ``minimum``."""
    _require(
        isinstance(value, int) and not isinstance(value, bool) and value >= minimum,
        f"{name} must be an integer >= {minimum}, got {value!r}",
    )


#: Lightning's accelerators (``auto``: CUDA when present).
ACCELERATORS = ("auto", "cpu", "cuda", "gpu", "mps", "tpu")

#: Strategies that train on several processes under torchrun (auto is DDP there).
DISTRIBUTED_STRATEGIES = ("auto", "ddp", "ddp_find_unused_parameters_true")


@dataclass(frozen=True)
class TrainingParameters:
    """``training``: shared by every variant.

    More than one process in all (``devices`` > 1 per node or ``num_nodes`` > 1) trains with DDP,
    launched by torchrun from the training node (``ptrag_kedro.models.distributed``);
    ``batch_size`` is then per process, and the global batch ``batch_size x processes``.
    """

    seeds: tuple[int, ...] = (0,)
    max_steps: int = 2000
    batch_size: int = 16
    cell_set_size: int = 32
    learning_rate: float = 1e-3
    same_batch_controls: bool = False
    batch_embedding: bool = False
    val_every_n_steps: int = 250
    checkpoint_every_n_steps: int = 500
    #: keep the weights of the validation check with the lowest val energy (not the last step)
    select_on_val: bool = True
    #: continue from the seed's last.ckpt when there is one (true), or stop when there is none
    #: (must); false starts again
    resume: bool | Literal["must"] = False
    keep_all_checkpoints: bool = False
    accelerator: str = "auto"
    #: processes per node: an integer, or auto (every CUDA GPU when the accelerator may be
    #: CUDA, else 1)
    devices: int | str = "auto"
    num_nodes: int = 1
    #: host:port where node rank 0 holds torchrun's rendezvous when num_nodes > 1 (empty: this
    #: host's name, port 29400)
    rendezvous_endpoint: str = ""
    strategy: str = "auto"
    bf16: bool = False
    #: torch.compile the model's forward (GPU runs; the first steps pay the compilation)
    compile: bool = False
    #: data-loader processes that draw the next batches while the model trains (0: drawn in
    #: the training process); worth 2-4 on a GPU when the screen is read from disk
    loader_workers: int = 0
    #: where training reads the screen's X: auto holds it in memory when its stored size is at
    #: most half the available memory, else reads rows from the file (through a row cache
    #: beside it); true or false force either
    in_memory: bool | Literal["auto"] = "auto"
    #: Lightning's bar, shown when the output is a terminal; elsewhere (a log file, SLURM, CI)
    #: training logs a line every ``log_every_n_steps`` steps instead
    progress_bar: bool = True
    log_every_n_steps: int = 100

    def __post_init__(self) -> None:
        seeds = self.seeds if isinstance(self.seeds, list | tuple) else [self.seeds]
        for seed in seeds:
            _require_integer(f"training.seeds: seed {seed!r}", seed, 0)
        _set(self, "seeds", tuple(int(seed) for seed in seeds))
        _require(
            len(self.seeds) > 0 and len(set(self.seeds)) == len(self.seeds),
            f"training.seeds must be a non-empty list of distinct seeds, not {list(self.seeds)}",
        )
        for name in (
            "max_steps",
            "batch_size",
            "cell_set_size",
            "val_every_n_steps",
            "checkpoint_every_n_steps",
            "log_every_n_steps",
        ):
            _require_integer(f"training.{name}", getattr(self, name), 1)
        _require_integer("training.loader_workers", self.loader_workers, 0)
        _require(
            isinstance(self.in_memory, bool) or self.in_memory == "auto",
            f"training.in_memory must be auto, true or false, got {self.in_memory!r}",
        )
        _require(
            isinstance(self.learning_rate, int | float)
            and not isinstance(self.learning_rate, bool)
            and self.learning_rate > 0,
            f"training.learning_rate must be a number > 0, got {self.learning_rate!r}",
        )
        _require(
            self.accelerator in ACCELERATORS,
            f"training.accelerator must be one of {', '.join(ACCELERATORS)}, "
            f"got {self.accelerator!r}",
        )
        _require(
            self.resume in (True, False, "must"),
            f"training.resume must be true, false or must, got {self.resume!r}",
        )
        self._check_processes()

    def _check_processes(self) -> None:
        for name in ("devices", "num_nodes"):  # "2" from a command line is 2
            value = getattr(self, name)
            if isinstance(value, str) and value.strip().isdigit():
                _set(self, name, int(value))
        counted = isinstance(self.devices, int) and not isinstance(self.devices, bool)
        _require(
            self.devices == "auto" or counted and self.devices >= 1,
            f"training.devices must be a positive integer or auto, not {self.devices!r}",
        )
        _require(
            isinstance(self.num_nodes, int) and self.num_nodes >= 1,
            f"training.num_nodes must be a positive integer, not {self.num_nodes!r}",
        )
        if self.num_nodes > 1 or self.devices != "auto" and self.devices > 1:
            self._check_distributed_strategy(self.devices)

    def _check_distributed_strategy(self, devices: int | str) -> None:
        _require(
            self.strategy in DISTRIBUTED_STRATEGIES,
            f"training.strategy '{self.strategy}' cannot train on {devices} device(s) x "
            f"{self.num_nodes} node(s), whose processes torchrun starts: use ddp or auto",
        )

    def processes_per_node(self) -> int:
        """``devices`` with auto resolved: every CUDA GPU when the accelerator may be CUDA,
        else 1 (never Lightning's own auto, which would re-launch ``kedro run`` per GPU)."""
        if self.devices != "auto":
            return int(self.devices)
        import torch  # only here: reading parameters must not load torch

        if self.accelerator in ("auto", "cuda", "gpu") and torch.cuda.is_available():
            return max(1, torch.cuda.device_count())
        return 1

    def launches_processes(self) -> bool:
        """Whether training runs on several processes (torchrun), not in the node's process."""
        processes = self.processes_per_node()
        several = processes > 1 or self.num_nodes > 1
        if several:
            self._check_distributed_strategy(processes)
        return several


#: The kinds of slot a ``response`` variant may be given (models/_constants.RESPONSE_KINDS,
#: without the diagnostic oracle).
RESPONSE_SLOT_KINDS = (
    "same_gene_other_line",
    "neighbour_same_line",
    "neighbour_other_lines",
    "context",
)


@dataclass(frozen=True)
class VariantParameters:
    """``variants.<name>``: what makes a variant, on top of the shared ``model`` backbone.

    Args:
        model: :class:`~ptrag_kedro.models.ModelConfig` fields that differ from ``model``
            (``retrieval`` at least).
        candidates_k: GenePT candidates per sentence for ``vanilla`` / ``ptrag``: an integer
            (at most the number ``retrieval_candidates`` lists per perturbation, its
            ``retrieval_index.k``), ``auto`` for every listed candidate, or ``{at_most: N}`` for
            every listed candidate up to N (a small screen lists fewer: it takes those).
        response_neighbours: neighbours per neighbour kind in the ``response`` block's slots.
        response_kinds: the kinds of slot the ``response`` block is given (default: all of
            same_gene_other_line, neighbour_same_line, neighbour_other_lines, context).
        label: how tables and plots name the variant (default: its key).
    """

    model: dict[str, Any] = field(default_factory=dict)
    candidates_k: int | Literal["auto"] | dict[str, int] = 0
    response_neighbours: int = 0
    response_kinds: tuple[str, ...] = ()
    label: str = ""

    def __post_init__(self) -> None:
        _set(self, "model", dict(self.model or {}))
        check_model_options(self.model, "model")
        retrieval = self.model.get("retrieval", "none")
        if retrieval in ("vanilla", "ptrag"):
            value = self.candidates_k
            capped = isinstance(value, dict) and set(value) == {"at_most"}
            _require(
                value == "auto"
                or _positive_integer(value)
                or capped
                and _positive_integer(value["at_most"]),
                f"retrieval '{retrieval}' needs candidates_k >= 1 or auto or {{at_most: N}} "
                f"(an integer N >= 1), not {value!r}",
            )
        if retrieval == "response":
            _require(
                self.response_neighbours >= 1, "retrieval 'response' needs response_neighbours >= 1"
            )
        _require(
            isinstance(self.response_kinds, list | tuple)
            and set(self.response_kinds) <= set(RESPONSE_SLOT_KINDS),
            f"response_kinds must be a list among {list(RESPONSE_SLOT_KINDS)}, got "
            f"{self.response_kinds!r}",
        )
        _set(self, "response_kinds", tuple(self.response_kinds))

    def model_config(
        self, backbone: dict[str, Any], n_genes: int, embedding_dim: int, n_batches: int
    ) -> ModelConfig:
        """The variant's model: the shared backbone with its own settings on top."""
        return ModelConfig(
            n_genes=n_genes,
            embedding_dim=embedding_dim,
            n_batches=n_batches,
            **{**backbone, **self.model},
        )

    @property
    def retrieval(self) -> str:
        return str(self.model.get("retrieval", "none"))

    def resolved_candidates_k(self, listed: int) -> int:
        """``candidates_k`` given ``listed`` candidates per perturbation in the candidates table
        (0 for a variant without GenePT candidates); more than are listed is a one-line error."""
        if self.retrieval not in ("vanilla", "ptrag"):
            return 0
        if self.candidates_k == "auto":
            return listed
        if isinstance(self.candidates_k, dict):
            cap = int(self.candidates_k["at_most"])
            if listed < cap:
                logger.info(
                    "candidates_k: {at_most: %d}, and retrieval_candidates lists %d per "
                    "perturbation: %d candidates per sentence",
                    cap,
                    listed,
                    listed,
                )
            return min(cap, listed)
        _require(
            self.candidates_k <= listed,
            f"candidates_k = {self.candidates_k}, but retrieval_candidates lists {listed} per "
            "perturbation (parameter retrieval_index.k): lower candidates_k (or set it to "
            "{at_most: N}), or raise retrieval_index.k and run `kedro run "
            "--pipelines=retrieval_index`",
        )
        return int(self.candidates_k)


#: Every baseline ``reporting.baselines`` may name (defined in pipelines/reporting/baselines.py).
BASELINE_NAMES = (
    "control_mean",
    "perturbation_mean",
    "context",
    "linear",
    "line_linear",
    "additive",
    "neighbour_mean",
)


@dataclass(frozen=True)
class ReportingParameters:
    """``reporting``: predictions, baselines, metrics and the paired comparison."""

    seed: int = 0
    same_batch_controls: bool = False
    n_pcs: int = 50
    #: DE genes (de_overlap_fdr): Wilcoxon test against the controls, Benjamini-Hochberg FDR
    de_fdr: float = 0.05
    baselines: tuple[str, ...] = BASELINE_NAMES
    ridge_alphas: tuple[float, ...] = (0.1, 1.0, 10.0, 100.0, 1000.0)
    #: neighbour_mean: the neighbour counts k it chooses from on the val groups
    neighbour_ks: tuple[int, ...] = (1, 2, 4, 8, 16, 32)
    #: the paired tests' reference: a variant of the run (``run_variants``); None: the first
    reference_variant: str | None = None
    #: family-wise level of the paired tests (Holm-corrected across the table)
    significance: float = 0.05
    #: hierarchical bootstrap resamples (p-values resolve to 1 / (resamples + 1))
    bootstrap_resamples: int = 10_000
    #: equivalence (TOST) margins, set before any result is seen: a difference within this
    #: fraction of the comparator's mean (distances, errors), or within this much (scores)
    relative_margin: float = 0.02
    absolute_margin: float = 0.01

    def __post_init__(self) -> None:
        for name in ("baselines", "ridge_alphas", "neighbour_ks"):
            value = getattr(self, name)
            _require(
                isinstance(value, list | tuple),
                f"reporting.{name} must be a list, got {value!r}",
            )
        _set(self, "baselines", tuple(str(name) for name in self.baselines))
        _set(self, "ridge_alphas", tuple(float(alpha) for alpha in self.ridge_alphas))
        _set(self, "neighbour_ks", tuple(int(k) for k in self.neighbour_ks))
        _require(len(self.baselines) > 0, "reporting.baselines must name at least one baseline")
        unknown = sorted(set(self.baselines) - set(BASELINE_NAMES))
        _require(
            not unknown,
            f"reporting.baselines must be among {list(BASELINE_NAMES)}, got unknown {unknown}",
        )
        _require(
            len(self.neighbour_ks) > 0 and min(self.neighbour_ks) >= 1,
            f"reporting.neighbour_ks must be a non-empty list of integers >= 1, got "
            f"{list(self.neighbour_ks)}",
        )
        _require(self.n_pcs >= 1, "reporting.n_pcs must be >= 1")
        _require(0 < self.de_fdr < 1, f"reporting.de_fdr must be in (0, 1), got {self.de_fdr!r}")
        _require(
            len(self.ridge_alphas) > 0 and min(self.ridge_alphas) > 0,
            "reporting.ridge_alphas must be a non-empty list of positive values",
        )
        _require(0 < self.significance < 1, "reporting.significance must be in (0, 1)")
        _require(
            isinstance(self.bootstrap_resamples, int) and self.bootstrap_resamples >= 100,
            f"reporting.bootstrap_resamples must be an integer >= 100, got "
            f"{self.bootstrap_resamples!r}",
        )
        _require(
            self.relative_margin > 0 and self.absolute_margin > 0,
            "reporting.relative_margin and reporting.absolute_margin must be > 0",
        )
        _require(
            self.reference_variant is None
            or isinstance(self.reference_variant, str)
            and bool(self.reference_variant),
            f"reporting.reference_variant must be a variant's name or null, got "
            f"{self.reference_variant!r}",
        )

    def reference(self, variants: Sequence[str]) -> str:
        """The reference among the run's ``variants`` (in run order): ``reference_variant``, or
        the first variant when it is not set."""
        names = list(variants)
        reference = self.reference_variant or (names[0] if names else "")
        _require(
            reference in names,
            f"reporting.reference_variant must be one of run_variants ({', '.join(names)}), "
            f"got {reference!r}",
        )
        return reference


@dataclass(frozen=True)
class ObsColumns:
    """``ingestion.columns``: the raw screen's obs columns, and the control label."""

    perturbation: str = "gene"
    cell_line: str = "cell_line"
    batch: str = "gem_group"
    control_label: str = "non-targeting"


HvgFlavor = Literal["seurat", "cell_ranger"]


@dataclass(frozen=True)
class FeatureParameters:
    """``ingestion.features``: quality control and the feature matrix."""

    #: used as the features when the screen has it (the preprint file's log-normalised HVGs)
    obsm_key: str | None = "X_hvg"
    min_cells_per_perturbation: int = 5
    min_genes_per_cell: int = 50
    normalize_target_sum: float = 10_000.0
    n_top_genes: int = 2000
    #: scanpy's flavours for log-normalised data (both computed from streamed per-line sums)
    hvg_flavor: HvgFlavor = "seurat"
    #: counts path: raw rows read at once; peak memory grows with it (not with the screen)
    block_rows: int = 50_000

    def __post_init__(self) -> None:
        _require(
            self.hvg_flavor in get_args(HvgFlavor),
            f"ingestion.features.hvg_flavor must be one of {get_args(HvgFlavor)}",
        )
        for name in ("min_cells_per_perturbation", "min_genes_per_cell"):
            _require(int(getattr(self, name)) >= 0, f"ingestion.features.{name} must be >= 0")
        _require(self.n_top_genes >= 1, "ingestion.features.n_top_genes must be >= 1")
        _require(
            isinstance(self.block_rows, int) and self.block_rows >= 1,
            f"ingestion.features.block_rows must be an integer >= 1, not {self.block_rows!r}",
        )
        _require(self.normalize_target_sum > 0, "ingestion.features.normalize_target_sum > 0")


SplitMode = Literal["few_shot", "zero_shot", "unseen_gene"]
#: unseen_gene: the (line, gene) groups of val/test genes outside the held-out line are
#: withheld (dropped from the screen: nothing reads them) or evaluated too (val/test there).
OtherLines = Literal["withhold", "evaluate"]


@dataclass(frozen=True)
class SplitParameters:
    """``ingestion.split``: which line is held out and how its perturbations are split.

    - ``few_shot``: the held-out line's perturbations go to val/test; each stays train in the
      other lines (the paper's setting).
    - ``zero_shot``: the whole held-out line is test; val is a fraction of the other lines' pairs.
    - ``unseen_gene``: val and test are disjoint *gene* sets, train in no line at all (GEARS'
      ``unseen_single``). They are drawn among the held-out line's genes, or among every line's
      genes when ``heldout_cell_line`` is empty (then every line evaluates them); their groups
      in the other lines are withheld or evaluated (``other_lines``).
    """

    heldout_cell_line: str | None
    mode: SplitMode = "few_shot"
    val_fraction: float = 0.1
    test_fraction: float = 0.3
    seed: int = 0
    #: the val/test lists' file (recorded in the manifest; the catalog's ``split_lists`` reads it)
    split_file: str | None = None
    other_lines: OtherLines = "withhold"

    def __post_init__(self) -> None:
        line = "" if self.heldout_cell_line is None else str(self.heldout_cell_line).strip()
        _set(self, "heldout_cell_line", "" if line.lower() in ("", "none", "null") else line)
        _require(
            self.mode in get_args(SplitMode),
            f"ingestion.split.mode must be one of {', '.join(get_args(SplitMode))}, "
            f"got {self.mode!r}",
        )
        _require(
            self.other_lines in get_args(OtherLines),
            f"ingestion.split.other_lines must be withhold or evaluate, got {self.other_lines!r}",
        )
        _require(
            bool(self.heldout_cell_line) or self.mode == "unseen_gene",
            f"ingestion.split.heldout_cell_line must name a cell line in mode {self.mode} "
            "(only unseen_gene can hold out genes of every line)",
        )
        _require(
            isinstance(self.seed, int) and not isinstance(self.seed, bool),
            f"ingestion.split.seed must be an integer, got {self.seed!r}",
        )
        for name in ("val_fraction", "test_fraction"):
            value = getattr(self, name)
            _require(
                isinstance(value, int | float) and not isinstance(value, bool),
                f"ingestion.split.{name} must be a number in [0, 1], got {value!r}",
            )
        _require(
            0 <= self.val_fraction <= 1
            and 0 <= self.test_fraction <= 1
            and self.val_fraction + self.test_fraction <= 1,
            "ingestion.split.val_fraction and test_fraction must be in [0, 1], summing to <= 1",
        )


@dataclass(frozen=True)
class DownloadParameters:
    """``download``: the real screen's URL (set in conf/replogle) and how to stream it."""

    url: str | None = None
    #: bytes; None trusts the server's Content-Length / Content-Range
    expected_size: int | None = None
    chunk_size: int = 1 << 20
    timeout_s: float = 30.0
    #: environment variable holding a Hugging Face token, for a gated dataset
    token_env_var: str = "HF_TOKEN"

    def __post_init__(self) -> None:
        _require(self.chunk_size >= 1, "download.chunk_size must be >= 1")
        _require(self.timeout_s > 0, "download.timeout_s must be > 0")


GeneptSource = Literal["file", "summaries"]
MissingPolicy = Literal["drop", "error"]


@dataclass(frozen=True)
class GeneptParameters:
    """``genept``: where gene vectors come from and what to do about genes without one."""

    #: file: a GenePT-format file (gene_embeddings_path); summaries: embed gene_summaries_path
    #: with the catalog's ``text_model``
    source: GeneptSource = "file"
    batch_size: int = 64
    missing: MissingPolicy = "drop"
    #: with ``missing: drop``, more missing than this is an error
    max_missing_fraction: float = 0.2

    def __post_init__(self) -> None:
        _require(
            self.source in get_args(GeneptSource),
            f"genept.source must be 'file' or 'summaries', not '{self.source}'",
        )
        _require(
            self.missing in get_args(MissingPolicy),
            f"genept.missing must be 'drop' or 'error', not '{self.missing}'",
        )
        _require(self.batch_size >= 1, "genept.batch_size must be >= 1")
        _require(0 <= self.max_missing_fraction <= 1, "genept.max_missing_fraction in [0, 1]")


@dataclass(frozen=True)
class RetrievalParameters:
    """``retrieval_index``: candidates per perturbation."""

    #: top-K train perturbations per query; ``auto``: the paper's 32, or fewer when the screen
    #: has fewer train perturbations (at most their number minus one, the query excluded)
    k: int | Literal["auto"] = "auto"

    def __post_init__(self) -> None:
        _require(
            self.k == "auto" or (isinstance(self.k, int) and self.k >= 1),
            f"retrieval_index.k must be a positive integer or auto, not {self.k!r}",
        )


_FOLD_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]*")


@dataclass(frozen=True)
class FoldParameters:
    """One fold of ``cross_validation.folds``: the held-out line and the split's seed."""

    heldout_cell_line: str
    split_seed: int = 0

    def __post_init__(self) -> None:
        _set(self, "heldout_cell_line", str(self.heldout_cell_line).strip())
        _require(
            isinstance(self.split_seed, int) and not isinstance(self.split_seed, bool),
            f"cross_validation.folds: split_seed must be an integer, got {self.split_seed!r}",
        )
        _require(
            bool(_FOLD_NAME.fullmatch(self.heldout_cell_line)),
            "cross_validation.folds: heldout_cell_line must be a cell line name (letters, "
            f"digits, _ and -), got {self.heldout_cell_line!r}",
        )

    @property
    def name(self) -> str:
        """The fold's name: its data folder and its key in the pooled tables."""
        return f"{self.heldout_cell_line}_s{self.split_seed}"


@dataclass(frozen=True)
class CrossValidationParameters:
    """``cross_validation``: the folds ``kedro cross-validate`` runs, one ``kedro run`` each.

    Args:
        folds: every (held-out line, split seed) to run; each gets its own data folder
            (``<data_root>/folds/<fold>``).
        pipeline: what each fold runs (``analysis``: ingestion to reporting).
        prepare: run once before the folds (``demo``: simulate the demo screen); empty for a
            real screen.
    """

    folds: tuple[FoldParameters, ...] = ()
    pipeline: str = "analysis"
    prepare: str = ""

    def __post_init__(self) -> None:
        folds = self.folds
        _require(
            isinstance(folds, list | tuple) and len(folds) > 0,
            f"cross_validation.folds must be a non-empty list of folds, got {folds!r}",
        )
        parsed = tuple(
            fold if isinstance(fold, FoldParameters) else FoldParameters(**_fold_dict(fold))
            for fold in folds
        )
        names = [fold.name for fold in parsed]
        _require(
            len(set(names)) == len(names),
            f"cross_validation.folds must be distinct, got {names}",
        )
        _set(self, "folds", parsed)
        _set(self, "prepare", str(self.prepare or ""))

    @property
    def names(self) -> list[str]:
        return [fold.name for fold in self.folds]


def _fold_dict(fold: Any) -> dict[str, Any]:
    _require(
        isinstance(fold, dict),
        f"cross_validation.folds: each fold must be a mapping with heldout_cell_line and "
        f"split_seed, got {fold!r}",
    )
    return fold
