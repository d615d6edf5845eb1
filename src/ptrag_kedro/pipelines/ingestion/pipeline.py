"""``ingestion`` pipeline: ``raw_screen`` -> ``screen`` (features, standard obs, split) and
``split_manifest``."""

from kedro.pipeline import Pipeline, node

from ptrag_kedro.pipelines.ingestion.nodes import select_features, split_screen, standardise_screen


def create_pipeline(**kwargs) -> Pipeline:
    return Pipeline(
        [
            node(
                standardise_screen,
                inputs=["raw_screen", "params:ingestion.columns"],
                outputs="standardised_screen",
                name="standardise_screen",
            ),
            node(
                select_features,
                inputs=["standardised_screen", "params:ingestion.features"],
                outputs="featurised_screen",
                name="select_features",
            ),
            node(
                split_screen,
                inputs=["featurised_screen", "params:ingestion.split", "split_lists"],
                outputs=["screen", "split_manifest"],
                name="split_screen",
            ),
        ]
    )
