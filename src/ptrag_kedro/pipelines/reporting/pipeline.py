"""``reporting`` pipeline: predictions and metrics per variant, baselines, comparison and plots."""

from kedro.pipeline import Pipeline, node, pipeline

from ptrag_kedro.pipelines.reporting.nodes import (
    compare_methods,
    evaluate_predictions,
    predict_baselines,
    predict_test_cells,
)
from ptrag_kedro.pipelines.reporting.plots import (
    gate_heatmap,
    loss_curves,
    metric_bars,
    w1_scatter,
    write_report,
)
from ptrag_kedro.pipelines.training import VARIANTS

SHARED_INPUTS = {"screen", "perturbation_embeddings", "retrieval_candidates", "split_manifest"}


def _variant_reporting(variant: str) -> Pipeline:
    base = Pipeline(
        [
            node(
                predict_test_cells,
                inputs=[
                    "model",
                    "screen",
                    "perturbation_embeddings",
                    "retrieval_candidates",
                    "split_manifest",
                    "params:reporting",
                ],
                outputs="predictions",
                name="predict_test_cells",
            ),
            node(
                evaluate_predictions,
                inputs=["predictions", "screen", "params:reporting"],
                outputs="metrics",
                name="evaluate_predictions",
            ),
        ]
    )
    return pipeline(
        base,
        namespace=variant,
        inputs=SHARED_INPUTS,
        parameters={"params:reporting": "params:reporting"},
    )


def create_pipeline(**kwargs) -> Pipeline:
    baselines = pipeline(
        Pipeline(
            [
                node(
                    predict_baselines,
                    inputs=[
                        "screen",
                        "perturbation_embeddings",
                        "split_manifest",
                        "params:reporting",
                        "params:training.cell_set_size",
                    ],
                    outputs="predictions",
                    name="predict_baselines",
                ),
                node(
                    evaluate_predictions,
                    inputs=["predictions", "screen", "params:reporting"],
                    outputs="metrics",
                    name="evaluate_baselines",
                ),
            ]
        ),
        namespace="baselines",
        inputs={"screen", "perturbation_embeddings", "split_manifest"},
        parameters={
            "params:reporting": "params:reporting",
            "params:training.cell_set_size": "params:training.cell_set_size",
        },
    )
    comparison = Pipeline(
        [
            node(
                compare_methods,
                inputs=[
                    "state.metrics",
                    "vanilla_rag.metrics",
                    "ptrag.metrics",
                    "baselines.metrics",
                ],
                outputs=["comparison", "comparison_table"],
                name="compare_methods",
            ),
            node(
                metric_bars,
                inputs="comparison",
                outputs=["comparison_metrics_plot", "comparison_metrics_plotly"],
                name="plot_metric_bars",
            ),
            node(
                w1_scatter,
                inputs=["state.metrics", "ptrag.metrics"],
                outputs="w1_scatter_plot",
                name="plot_w1_scatter",
            ),
            node(
                loss_curves,
                inputs=["state.loss_history", "vanilla_rag.loss_history", "ptrag.loss_history"],
                outputs="loss_curves_plot",
                name="plot_loss_curves",
            ),
            node(
                gate_heatmap,
                inputs="ptrag.predictions",
                outputs=["gate_heatmap_plot", "ptrag_kept_fraction"],
                name="plot_gate_heatmap",
            ),
            node(
                write_report,
                inputs=[
                    "comparison_table",
                    "retrieval_diagnostics",
                    "ptrag_kept_fraction",
                    "baselines.predictions",
                ],
                outputs="comparison_report",
                name="write_report",
            ),
        ]
    )
    return (
        sum((_variant_reporting(variant) for variant in VARIANTS), Pipeline([]))
        + baselines
        + comparison
    )
