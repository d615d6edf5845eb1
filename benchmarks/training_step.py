"""Training step, peak memory and inference throughput: ours side by side with arc-state's STATE.

    python benchmarks/training_step.py --config demo paper            # ours only (no arc-state)
    make peer        # arc-state in its own environment, .venv-peer (see the Makefile)
    .venv-peer/bin/python benchmarks/training_step.py --config demo paper --steps 5 --threads 1

A step is forward + energy loss + backward + Adam update on one synthetic batch of the
configuration's shape. Ours (state, vanilla_rag, ptrag, ptrag_naive, response_rag) and, when
``import state`` works, arc-state's ST model (``StateTransitionPerturbationModel`` with its Llama
backbone) are built at the same shapes and timed in ONE process, round-robin over the steps
(the order rotating each round) so that drift on a shared machine hits all alike; the median is
reported. ``ptrag_naive`` is PT-RAG computed the direct way (materialising the [B, S, K, 3H]
concatenation), the reference the algebraic decomposition of ``PTRAGRetrieval`` is measured
against; ``response_rag`` reads its response slots.

Our models come from conf/: the ``model`` section and the variants of
conf/base/parameters_training.yml, with conf/paper's soft-merged over them for ``paper``; the
shapes from the same files (B, S, K, genes: n_top_genes of conf/base or, for the paper's real
screen, conf/replogle). arc-state's comes from its own ``configs/model/state.yaml`` through its
own factory ``get_lightning_module`` with the shapes set to ours: hidden, layers, heads, head
width, feed-forward width, and encoder / decoder depth = our ``mlp_layers``; its loss is its own
``loss_fn`` (geomloss ``SamplesLoss("energy")``, per sentence, nan-mean as in its
``training_step``). Peak memory is measured in a fresh subprocess per model (CPU: ru_maxrss of
the child minus its RSS just before the model is built; CUDA: max_memory_allocated), over two
training steps. Inference throughput is predicted cells (B x S per forward) per second, eval
mode, under ``torch.inference_mode()``.

Efficiency against the machine: each model's FLOPs per training step (forward + loss + backward,
counted by ``torch.utils.flop_counter.FlopCounterMode`` on the eager model; Adam's elementwise
update is not counted), its achieved FLOP/s (FLOPs / median step), and that as a fraction of the
peak this machine measures: a ``--peak-size`` square matmul in the step's dtype (fp32; bf16 under
``--bf16``), timed in the same round robin as the models so that load on a shared machine hits
both alike (a CPU without bf16 instructions, AVX2 only, emulates bf16 products far slower than
fp32 ones: under ``--bf16`` there the fraction is of that slow reference). Attention on the CPU
is counted with torch's formulas for its CUDA kernels (``CPU_ATTENTION_FLOPS``). ``--compile``
compiles each model (``nn.Module.compile``, as ``training.compile`` does); FLOPs are counted on
the eager forward, as compilation does not change the arithmetic. One JSON line per
configuration is appended to ``--results`` (benchmarks/results/training_step.jsonl).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import datetime
import io
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib import metadata, resources
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
import yaml
from torch import nn
from torch.utils import flop_counter
from torch.utils.flop_counter import FlopCounterMode

from ptrag_kedro.models import ModelConfig, PerturbationModel
from ptrag_kedro.models import _constants as keys
from ptrag_kedro.models.module import PTRAGRetrieval, RetrievalOutput
from ptrag_kedro.models.training import denormals_flushed
from ptrag_kedro.parameters import VariantParameters

ROOT = Path(__file__).resolve().parents[1]
CONF = ROOT / "conf"
RESULTS = ROOT / "benchmarks" / "results" / "training_step.jsonl"
OURS = ("state", "vanilla_rag", "ptrag", "ptrag_naive", "response_rag")
PEER = "arc_state"
PEAK = "peak_matmul"
#: which conf variant builds each of ours
SOURCE = {"ptrag_naive": "ptrag"}
N_TRAIN_PERTURBATIONS = 2000
#: response slots per sentence: the query gene in the other lines (3 of the 4) + 2 x the
#: GenePT neighbours (in the line, in other lines) + the line's context
OTHER_LINES = 3
MEMORY_STEPS = 2
#: the issue's targets: (label, numerator, denominator, at most, measured on)
TARGETS = (
    ("our STATE step / arc-state step", "state", PEER, 0.5, "step_s"),
    ("PT-RAG step / our STATE step", "ptrag", "state", 1.15, "step_s"),
    ("PT-RAG peak memory / our STATE's", "ptrag", "state", 1.2, "peak_mb"),
)
#: the issue's efficiency target: our STATE step at least this fraction of the measured peak
PEAK_TARGET = 0.7


def _cpu_attention_flops(query, key, value, *_, **__) -> int:
    return flop_counter.sdpa_flop_count(query, key, value)


def _cpu_attention_backward_flops(grad_out, query, key, value, *_, **__) -> int:
    return flop_counter.sdpa_backward_flop_count(grad_out, query, key, value)


#: torch's FLOP registry has the CUDA attention kernels but not the CPU one SDPA picks here;
#: the same formulas (the arguments arrive as shapes)
CPU_ATTENTION_FLOPS = {
    torch.ops.aten._scaled_dot_product_flash_attention_for_cpu: _cpu_attention_flops,
    torch.ops.aten._scaled_dot_product_flash_attention_for_cpu_backward: (
        _cpu_attention_backward_flops
    ),
}


class NaivePTRAG(PTRAGRetrieval):
    """PT-RAG without the decomposition: the reference the fused block is measured against."""

    def forward(self, cells, query, batch, encode, generator=None, **_):
        logits, projected = self.direct_parts(cells, query, encode(batch[keys.CANDIDATES]))
        gates = F.gumbel_softmax(logits, tau=self.config.tau, hard=True)[..., 1]
        retrieved = (gates[..., None] * projected).sum(2)
        return RetrievalOutput(retrieved, gates=gates, penalty=gates.mean())


# ---------------------------------------------------------------- settings from conf/


@dataclass(frozen=True)
class Settings:
    """Batch shapes and our model configurations of one configuration (demo | paper)."""

    name: str
    batch: int  # B sentences
    cells: int  # S cells per sentence
    genes: int
    embedding: int
    k: int  # candidates per sentence (vanilla RAG, PT-RAG)
    slots: int  # response slots (response_rag)
    models: dict[str, ModelConfig] = field(repr=False)


def _yaml(path: Any) -> dict:
    return yaml.safe_load(path.read_text()) or {}


def _merge(base: dict, over: dict) -> dict:
    """Soft merge, as Kedro's config loader merges an environment over conf/base."""
    merged = dict(base)
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            value = _merge(merged[key], value)
        merged[key] = value
    return merged


def _conf(name: str, stem: str) -> dict:
    """conf/base/parameters_<stem>.yml, with conf/<name>'s over it when it has one."""
    settings = _yaml(CONF / "base" / f"parameters_{stem}.yml")
    override = CONF / name / f"parameters_{stem}.yml"
    return _merge(settings, _yaml(override)) if name != "base" and override.exists() else settings


def load_settings(name: str) -> Settings:
    """demo: conf/base; paper: conf/paper over it (genes: conf/replogle's real screen)."""
    env = "paper" if name == "paper" else "base"
    training = _conf(env, "training")
    index_k = _conf(env, "retrieval_index")["retrieval_index"]["k"]
    index_k = 32 if index_k == "auto" else int(index_k)  # auto: the paper's K
    screen = "replogle" if name == "paper" else "base"
    genes = _conf(screen, "ingestion")["ingestion"]["features"]["n_top_genes"]
    embedding = _conf("base", "demo")["simulation"]["embedding_dim"]
    variants = training["variants"]
    # the candidates a sentence reads when the index lists index_k per perturbation
    k = VariantParameters(**variants["ptrag"]).resolved_candidates_k(index_k)
    neighbours = variants["response_rag"].get("response_neighbours", 8)
    models = {
        variant: ModelConfig(
            n_genes=genes,
            embedding_dim=embedding,
            **_merge(training["model"], variants[SOURCE.get(variant, variant)].get("model", {})),
        )
        for variant in OURS
    }
    return Settings(
        name=name,
        batch=training["training"]["batch_size"],
        cells=training["training"]["cell_set_size"],
        genes=genes,
        embedding=embedding,
        k=k,
        slots=OTHER_LINES + 2 * neighbours + 1,
        models=models,
    )


def synthetic_batch(settings: Settings, device: torch.device) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(1)
    table = torch.randn(N_TRAIN_PERTURBATIONS, settings.embedding, generator=generator)
    rows = torch.randint(
        0, N_TRAIN_PERTURBATIONS, (settings.batch, settings.k + 1), generator=generator
    )
    size = (settings.batch, settings.cells, settings.genes)
    slots = (settings.batch, settings.slots)
    batch = {
        keys.CONTROL: torch.rand(*size, generator=generator),
        keys.TARGET: torch.rand(*size, generator=generator),
        keys.PERTURBATION: table[rows[:, 0]],
        keys.CANDIDATES: table[rows[:, 1:]],  # looked up per sentence, as in training
        keys.RESPONSES: torch.randn(*slots, settings.genes, generator=generator) * 0.3,
        keys.RESPONSE_FEATURES: torch.rand(*slots, keys.N_RESPONSE_FEATURES, generator=generator),
        keys.RESPONSE_MASK: torch.ones(*slots, dtype=torch.bool),
    }
    return {key: value.to(device) for key, value in batch.items()}


# ---------------------------------------------------------------- the models


def peer_available() -> bool:
    try:
        import state.tx.utils  # noqa: F401
    except ImportError:
        return False
    return True


@contextlib.contextmanager
def _explicit_head_dim(hidden: int, heads: int):
    """Let transformers' LlamaConfig take an explicit head_dim with hidden % heads != 0.

    transformers 5 validates ``hidden_size % num_attention_heads == 0`` even when ``head_dim`` is
    given (the paper's 128 hidden, 12 heads x 58); LlamaAttention itself uses heads x head_dim.
    Only that check is skipped, only while arc-state builds its model, only when needed.
    """
    from transformers import LlamaConfig

    saved = getattr(LlamaConfig, "__class_validators__", None)
    if saved is None or hidden % heads == 0:
        yield
        return
    LlamaConfig.__class_validators__ = [
        check for check in saved if check.__name__ != "validate_architecture"
    ]
    try:
        yield
    finally:
        LlamaConfig.__class_validators__ = saved


def peer_model(settings: Settings) -> nn.Module:
    """arc-state's ST model from its own state.yaml and factory, at our STATE's shapes."""
    from state.tx.utils import get_lightning_module

    ours = settings.models["state"]
    hidden = ours.hidden_dim
    configs = resources.files("state") / "configs"
    model = _yaml(configs / "model" / "state.yaml")["kwargs"]
    model["transformer_backbone_kwargs"].update(
        hidden_size=hidden,
        max_position_embeddings=settings.cells,
        intermediate_size=ours.intermediate_dim or 4 * hidden,
        num_hidden_layers=ours.n_layers,
        num_attention_heads=ours.n_heads,
        num_key_value_heads=ours.n_heads,
        head_dim=ours.head_dim or hidden // ours.n_heads,
    )
    model.update(
        hidden_dim=hidden,
        cell_set_len=settings.cells,
        n_encoder_layers=ours.mlp_layers,  # state.yaml: 1 (a Linear); ours: mlp_layers
        n_decoder_layers=ours.mlp_layers,
        dropout=ours.dropout,  # arc-state's default 0.1 (MLP dropout); ours 0.0
    )
    training = _yaml(configs / "training" / "default.yaml")
    data = {"embed_key": "X_hvg", "output_space": "gene", "basal_mapping_strategy": "random"}
    dims = {
        "input_dim": settings.genes,
        "hvg_dim": settings.genes,
        "gene_dim": settings.genes,
        "output_dim": settings.genes,
        "pert_dim": settings.embedding,
        "batch_dim": None,
        "gene_names": None,
    }
    quiet = contextlib.redirect_stdout(io.StringIO())  # its constructor prints the module
    with quiet, _explicit_head_dim(hidden, ours.n_heads):
        return get_lightning_module("state", data, model, training, dims)


@dataclass
class Runner:
    """One model with its batch: a timed training step and a timed prediction."""

    name: str
    model: nn.Module
    loss: Callable[[], torch.Tensor]  # forward + loss
    predict: Callable[[], torch.Tensor]
    device: torch.device
    bf16: bool = False
    optimiser: torch.optim.Optimizer = field(init=False)

    def __post_init__(self) -> None:
        trainable = [p for p in self.model.parameters() if p.requires_grad]
        # fused, as our training's Adam is (for every model alike)
        self.optimiser = torch.optim.Adam(trainable, lr=1e-3, fused=True)

    def _autocast(self):
        return torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.bf16)

    def _sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def flops(self) -> int:
        """FLOPs of one training step's forward + loss + backward (no optimiser update)."""
        self.model.train(True)
        self.optimiser.zero_grad(set_to_none=True)
        with FlopCounterMode(display=False, custom_mapping=CPU_ATTENTION_FLOPS) as counter:
            with self._autocast():
                loss = self.loss()
            loss.backward()
        self.optimiser.zero_grad(set_to_none=True)
        return counter.get_total_flops()

    def time(self, phase: str) -> float:
        self.model.train(phase == "train")
        self._sync()
        start = time.perf_counter()
        if phase == "train":
            self.optimiser.zero_grad(set_to_none=True)
            with self._autocast():
                loss = self.loss()
            loss.backward()
            self.optimiser.step()
        else:
            with torch.inference_mode(), self._autocast():
                self.predict()
        self._sync()
        return time.perf_counter() - start


class PeakMatmul:
    """The machine's reference: one ``size`` x ``size`` matmul in the step's dtype, timed in the
    round robin beside the models (its "step" is the product, in either phase)."""

    name = PEAK

    def __init__(self, size: int, device: torch.device, bf16: bool) -> None:
        generator = torch.Generator().manual_seed(2)
        dtype = torch.bfloat16 if bf16 else torch.float32
        self.left, self.right = (
            torch.randn(size, size, generator=generator).to(device, dtype) for _ in range(2)
        )
        self.device = device
        self.flop_count = 2 * size**3

    def time(self, phase: str) -> float:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        start = time.perf_counter()
        torch.mm(self.left, self.right)
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        return time.perf_counter() - start


def build_runner(
    name: str,
    settings: Settings,
    batch: dict,
    device: torch.device,
    bf16: bool,
    compiled: bool = False,
) -> Runner:
    """A model with its batch; ``compiled``: its forward compiled in place, as
    ``training.compile`` does (parameter names unchanged)."""
    runner = _build_runner(name, settings, batch, device, bf16)
    if compiled:
        runner.model.compile()
    return runner


def count_flops(runner: Runner) -> int:
    """FLOPs of a step, counted on the eager forward even when the model is compiled."""
    compiled = runner.model._compiled_call_impl  # nn.Module.compile's hook (None: eager)
    runner.model._compiled_call_impl = None
    try:
        return runner.flops()
    finally:
        runner.model._compiled_call_impl = compiled


def _build_runner(name: str, settings: Settings, batch: dict, device: torch.device, bf16: bool):
    torch.manual_seed(0)
    b, s = settings.batch, settings.cells
    if name == PEER:
        model = peer_model(settings).to(device)
        inputs = {
            "pert_emb": batch[keys.PERTURBATION].repeat_interleave(s, dim=0),  # one per cell
            "ctrl_cell_emb": batch[keys.CONTROL].reshape(b * s, -1),
            "pert_cell_emb": batch[keys.TARGET].reshape(b * s, -1),
        }
        target = batch[keys.TARGET]

        def loss() -> torch.Tensor:  # its training_step's main loss, without Lightning's log
            predicted = model(inputs).reshape(b, s, -1)
            return model.loss_fn(predicted, target).nanmean()

        return Runner(name, model, loss, lambda: model(inputs), device, bf16)
    config = settings.models[name]
    model = PerturbationModel(config)
    if name == "ptrag_naive":
        naive = NaivePTRAG(config)
        naive.load_state_dict(model.retrieval.state_dict())
        model.retrieval = naive
    model = model.to(device)
    return Runner(
        name,
        model,
        lambda: model.loss(batch, model(batch)).total,
        lambda: model(batch).predicted,
        device,
        bf16,
    )


def parameter_counts(runner: Runner) -> dict[str, int]:
    """Whole model, trainable, and the transformer without token embeddings."""
    model = runner.model
    backbone = model.transformer_backbone if runner.name == PEER else model.transformer
    return {
        "whole": sum(p.numel() for p in model.parameters()),
        "trainable": sum(p.numel() for p in model.parameters() if p.requires_grad),
        "backbone": sum(
            p.numel() for n, p in backbone.named_parameters() if not n.startswith("embed_tokens")
        ),
    }


# ---------------------------------------------------------------- measuring


def round_robin(
    runners: list[Runner | PeakMatmul], phase: str, steps: int, warmup: int
) -> dict[str, float]:
    """Median seconds per step of each runner, interleaved and rotated each round."""
    times: dict[str, list[float]] = {runner.name: [] for runner in runners}
    for index in range(warmup + steps):
        shift = index % len(runners)
        for runner in runners[shift:] + runners[:shift]:
            seconds = runner.time(phase)
            if index >= warmup:
                times[runner.name].append(seconds)
    return {name: statistics.median(values) for name, values in times.items()}


def _status_mb(field_name: str) -> float:
    """A memory line of /proc/self/status (VmRSS: now; VmHWM: the peak), in MiB."""
    with open("/proc/self/status") as handle:
        for line in handle:
            if line.startswith(field_name + ":"):
                return int(line.split()[1]) / 1024  # kB
    raise KeyError(field_name)


def _reset_peak_rss() -> None:
    """Start VmHWM afresh from the current RSS (Linux >= 4.0); harmless where refused."""
    with contextlib.suppress(OSError), open("/proc/self/clear_refs", "w") as handle:
        handle.write("5")


def memory_child(config: str, name: str, bf16: bool, compiled: bool) -> None:
    """In a fresh process: the peak memory of MEMORY_STEPS training steps of one model.

    CPU: the child's own peak RSS (VmHWM, reset just before the model is built: ru_maxrss would
    carry the parent's RSS over the fork) minus its RSS then; CUDA: max_memory_allocated.
    """
    device = _device()
    settings = load_settings(config)
    batch = synthetic_batch(settings, device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        baseline = torch.cuda.memory_allocated(device) / 2**20
    else:
        _reset_peak_rss()
        baseline = _status_mb("VmRSS")
    runner = build_runner(name, settings, batch, device, bf16, compiled)
    for _ in range(MEMORY_STEPS):
        runner.time("train")
    if device.type == "cuda":
        peak = torch.cuda.max_memory_allocated(device) / 2**20
    else:
        peak = _status_mb("VmHWM")
    print(json.dumps({"peak_mb": round(peak - baseline, 1)}))


def peak_memory(config: str, name: str, bf16: bool, compiled: bool) -> float | None:
    command = [sys.executable, __file__, "--memory-child", config, name] + ["--bf16"] * bf16
    command += ["--compile"] * compiled
    command += ["--threads", str(torch.get_num_threads())]
    done = subprocess.run(command, capture_output=True, text=True, env=os.environ.copy())
    if done.returncode:
        print(f"memory of {name} failed:\n{done.stderr[-2000:]}", file=sys.stderr)
        return None
    return json.loads(done.stdout.strip().splitlines()[-1])["peak_mb"]


def _device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


# ---------------------------------------------------------------- reporting


def _ratio(rows: dict, numerator: str, denominator: str, column: str) -> float | None:
    top, bottom = rows.get(numerator, {}), rows.get(denominator, {})
    if top.get(column) is None or not bottom.get(column):
        return None
    return top[column] / bottom[column]


def _cell(value: float | None, form: str) -> str:
    return "n/a" if value is None else format(value, form)


def print_table(settings: Settings, rows: dict[str, dict], peak: dict) -> None:
    print(
        f"\n### {settings.name}: B {settings.batch} x S {settings.cells} cells, "
        f"{settings.genes} genes, {settings.embedding}-d embedding, K {settings.k}, "
        f"{settings.slots} response slots\n"
    )
    print(
        "| model | step s | x arc-state | x our STATE | peak MB | cells/s | params "
        "| GFLOP/step | GFLOP/s | of peak |"
    )
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for name, row in rows.items():
        cells = (
            _cell(row["step_s"], ".3f"),
            _cell(_ratio(rows, name, PEER, "step_s"), ".2f"),
            _cell(_ratio(rows, name, "state", "step_s"), ".2f"),
            _cell(row["peak_mb"], ".0f"),
            _cell(row["cells_per_s"], ",.0f"),
            f"{row['params']['whole']:,}",
            _cell(row["flops_per_step"] / 1e9, ",.2f"),
            _cell(row["flop_per_s"] / 1e9, ",.1f"),
            _cell(row["of_peak"], ".1%"),
        )
        print(f"| {name} | " + " | ".join(cells) + " |")
    print(
        f"\npeak: {peak['size']} x {peak['size']} {peak['dtype']} matmul, "
        f"{peak['flop_per_s'] / 1e9:,.1f} GFLOP/s (median of the same round robin)"
    )


def target_lines(rows: dict[str, dict]) -> dict[str, dict]:
    """Each target, measured, and met / missed (by how much)."""
    report = {}
    if "state" in rows:
        value = rows["state"]["of_peak"]
        verdict = "met" if value >= PEAK_TARGET else f"MISSED ({value / PEAK_TARGET:.0%} of it)"
        label = "our STATE step's FLOP/s / the peak matmul's"
        print(f"target {label} >= {PEAK_TARGET}: {value:.3f} -> {verdict}")
        report[label] = {"at_least": PEAK_TARGET, "value": value, "verdict": verdict}
    for label, numerator, denominator, limit, column in TARGETS:
        value = _ratio(rows, numerator, denominator, column)
        if value is None:
            verdict = "not measured"
        elif value <= limit:
            verdict = f"met ({(1 - value / limit) * 100:.0f}% under)"
        else:
            verdict = f"MISSED by {(value / limit - 1) * 100:.0f}%"
        print(f"target {label} <= {limit}: {_cell(value, '.3f')} -> {verdict}")
        report[label] = {"limit": limit, "value": value, "verdict": verdict}
    return report


def print_parameters(rows: dict[str, dict]) -> None:
    if "state" not in rows:
        return
    ours = rows["state"]["params"]
    print(f"\nparameters: our STATE {ours['whole']:,} (transformer {ours['backbone']:,})", end="")
    if PEER in rows:
        peer = rows[PEER]["params"]
        print(
            f" | arc-state {peer['whole']:,} whole, {peer['trainable']:,} trainable "
            f"(the rest: frozen Llama token embeddings), backbone without token embeddings "
            f"{peer['backbone']:,}",
            end="",
        )
    print()


def append_result(settings: Settings, rows: dict, peak: dict, targets: dict, args, device) -> None:
    record = {
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "config": settings.name,
        "shapes": {k: v for k, v in dataclasses.asdict(settings).items() if k != "models"},
        "device": str(device),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "cpus": os.cpu_count(),
        "machine": platform.machine(),
        "arc_state": metadata.version("arc-state") if PEER in rows else None,
        "steps": args.steps,
        "warmup": args.warmup,
        "bf16": args.bf16,
        "compile": args.compile,
        "peak": peak,
        "models": rows,
        "targets": targets,
    }
    args.results.parent.mkdir(parents=True, exist_ok=True)
    with args.results.open("a") as handle:
        handle.write(json.dumps(record) + "\n")


# ---------------------------------------------------------------- main


def run_config(name: str, args, device: torch.device, peer: bool) -> None:
    settings = load_settings(name)
    names = [model for model in args.models if model != PEER or peer]
    batch = synthetic_batch(settings, device)
    runners = [
        build_runner(model, settings, batch, device, args.bf16, args.compile) for model in names
    ]
    flops = {runner.name: count_flops(runner) for runner in runners}
    reference = PeakMatmul(args.peak_size, device, args.bf16)
    step = round_robin([*runners, reference], "train", args.steps, args.warmup)
    infer = round_robin(runners, "predict", args.steps, args.warmup)
    params = {runner.name: parameter_counts(runner) for runner in runners}
    del runners, batch
    peak = {
        "size": args.peak_size,
        "dtype": "bf16" if args.bf16 else "fp32",
        "step_s": step[PEAK],
        "flop_per_s": reference.flop_count / step[PEAK],
    }
    cells = settings.batch * settings.cells
    rows = {
        model: {
            "step_s": round(step[model], 4),
            "predict_s": round(infer[model], 4),
            "cells_per_s": round(cells / infer[model], 1),
            "peak_mb": peak_memory(name, model, args.bf16, args.compile) if args.memory else None,
            "params": params[model],
            "flops_per_step": flops[model],
            "flop_per_s": flops[model] / step[model],
            "of_peak": flops[model] / step[model] / peak["flop_per_s"],
        }
        for model in names
    }
    print_table(settings, rows, peak)
    print_parameters(rows)
    targets = target_lines(rows)
    append_result(settings, rows, peak, targets, args, device)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", nargs="+", default=["demo", "paper"], choices=["demo", "paper"])
    parser.add_argument("--steps", type=int, default=10, help="measured steps per model")
    parser.add_argument("--warmup", type=int, default=2, help="unmeasured steps first")
    parser.add_argument("--no-peer", action="store_true", help="ours only, without arc-state")
    parser.add_argument("--bf16", action="store_true", help="bf16 autocast (for CUDA)")
    parser.add_argument(
        "--compile", action="store_true", help="torch.compile each model (as training.compile)"
    )
    parser.add_argument(
        "--models",
        nargs="+",
        default=[*OURS, PEER],
        choices=[*OURS, PEER],
        help="the models to time (arc-state only where importable)",
    )
    parser.add_argument(
        "--peak-size",
        type=int,
        default=4096,
        help="side of the square matmul that measures the machine's peak FLOP/s",
    )
    parser.add_argument(
        "--no-memory",
        dest="memory",
        action="store_false",
        help="skip the peak-memory subprocesses (one per model)",
    )
    parser.add_argument("--results", type=Path, default=RESULTS, help="JSON lines appended here")
    parser.add_argument(
        "--threads",
        type=int,
        default=0,
        help="torch CPU threads (0: torch's default); 1 where other jobs share the cores, as "
        "OpenMP threads that wait on a busy core make each step many times slower",
    )
    parser.add_argument("--memory-child", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    # As in training (models/training.py): denormals flushed to zero, for every model alike.
    with denormals_flushed():
        if args.memory_child:
            memory_child(*args.memory_child, args.bf16, args.compile)
            return
        device = _device()
        peer = not args.no_peer and PEER in args.models and peer_available()
        if not args.no_peer and PEER in args.models and not peer:
            print("arc-state is not importable: timing ours only (install the `peer` extra)")
        print(f"device {device}, torch {torch.__version__}, {torch.get_num_threads()} threads")
        for name in args.config:
            run_config(name, args, device, peer)


if __name__ == "__main__":
    main()
