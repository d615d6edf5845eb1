"""``demo`` pipeline: the simulated screen that a bare ``kedro run`` analyses."""

from kedro.pipeline import Pipeline, node

from ptrag_kedro.pipelines.demo.nodes import simulate_demo_screen


def create_pipeline(**kwargs) -> Pipeline:
    return Pipeline(
        [
            node(
                simulate_demo_screen,
                inputs="params:simulation",
                outputs=["raw_screen", "raw_gene_embeddings", "gene_modules"],
                name="simulate_demo_screen",
            )
        ]
    )
