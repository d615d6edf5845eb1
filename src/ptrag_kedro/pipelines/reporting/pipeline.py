"""``reporting`` pipeline: predictions and metrics per variant, baselines, comparison and plots.

Built from the run's variant names: one namespaced predict/evaluate instance per variant, and
cross-variant nodes whose inputs are keyed by variant name.
"""

from collections.abc import Iterable

from kedro.pipeline import Pipeline, node, pipeline

from ptrag_kedro.pipelines.reporting.baselines import predict_baselines
from ptrag_kedro.pipelines.reporting.comparison import compare_methods
from ptrag_kedro.pipelines.reporting.evaluation import evaluate_predictions
from ptrag_kedro.pipelines.reporting.inference import predict_test_cells
from ptrag_kedro.pipelines.reporting.plots import (
    gate_heatmap,
    gate_summary,
    loss_curves,
    metric_bars,
    reference_scatter,
)
from ptrag_kedro.pipelines.reporting.report import describe_run, write_report
from ptrag_kedro.schema import MODEL_INPUTS
from ptrag_kedro.variants import variant_names


def _evaluate(name: str) -> Pipeline:
    return node(
        evaluate_predictions,
        inputs=["predictions", "screen", "params:reporting"],
        outputs="metrics",
        name=name,
    )


def variant_reporting(variant: str) -> Pipeline:
    base = Pipeline(
        [
            node(
                predict_test_cells,
                inputs=[
                    "model",
                    "screen",
                    "perturbation_embeddings",
                    "retrieval_candidates",
                    "perturbation_responses",
                    "split_manifest",
                    "params:reporting",
                ],
                outputs=["predictions", "gates"],
                name="predict_test_cells",
            ),
            _evaluate("evaluate_predictions"),
        ]
    )
    return pipeline(
        base,
        namespace=variant,
        inputs=set(MODEL_INPUTS),
        # Read by the comparison across variants: public names, not `<variant>.metrics`
        # (Kedro keeps dotted names for datasets used inside their namespace).
        outputs={"metrics": f"{variant}_metrics", "gates": f"{variant}_gates"},
        parameters={"params:reporting": "params:reporting"},
    )


def baselines_reporting() -> Pipeline:
    base = Pipeline(
        [
            node(
                predict_baselines,
                inputs=["screen", "perturbation_embeddings", "split_manifest", "params:reporting"],
                outputs=["predictions", "summary"],
                name="predict_baselines",
            ),
            _evaluate("evaluate_baselines"),
        ]
    )
    return pipeline(
        base,
        namespace="baselines",
        inputs={"screen", "perturbation_embeddings", "split_manifest"},
        outputs={"metrics": "baselines_metrics", "summary": "baselines_summary"},
        parameters={"params:reporting": "params:reporting"},
    )


def comparison_reporting(variants: list[str]) -> Pipeline:
    def per_variant(dataset: str) -> dict[str, str]:
        return {name: f"{name}_{dataset}" for name in variants}

    return Pipeline(
        [
            # `run_context` (env, commit, start, MLflow run id) comes from the tracking hook.
            node(
                describe_run,
                inputs=["run_context", "split_manifest", "params:training"],
                outputs="run_metadata",
                name="describe_run",
            ),
            node(
                compare_methods,
                inputs={
                    "reporting": "params:reporting",
                    "baselines": "baselines_metrics",
                    "run_metadata": "run_metadata",
                    **per_variant("metrics"),
                },
                outputs=["comparison", "paired_tests"],
                name="compare_methods",
            ),
            node(
                metric_bars,
                inputs=["comparison", "params:reporting"],
                outputs=["comparison_metrics_plot", "comparison_metrics_plotly"],
                name="plot_metric_bars",
            ),
            node(
                reference_scatter,
                inputs={"reporting": "params:reporting", **per_variant("metrics")},
                outputs="reference_scatter_plot",
                name="plot_reference_scatter",
            ),
            node(
                loss_curves,
                inputs=per_variant("loss_history"),
                outputs="loss_curves_plot",
                name="plot_loss_curves",
            ),
            node(gate_summary, per_variant("gates"), "gate_summary", name="summarise_gates"),
            node(gate_heatmap, per_variant("gates"), "gate_heatmap_plot", name="plot_gates"),
            node(
                write_report,
                inputs=[
                    "comparison",
                    "paired_tests",
                    "gate_summary",
                    "retrieval_diagnostics",
                    "baselines_summary",
                    "split_manifest",
                    "params:training",
                    "params:reporting",
                    "run_metadata",
                ],
                outputs="comparison_report",
                name="write_report",
            ),
        ]
    )


def create_pipeline(variants: Iterable[str] | None = None, **kwargs) -> Pipeline:
    names = list(variant_names() if variants is None else variants)
    return (
        sum((variant_reporting(name) for name in names), Pipeline([]))
        + baselines_reporting()
        + comparison_reporting(names)
    )
