"""``ingestion`` pipeline: ``raw_screen`` -> ``screen`` (standard obs, quality control, split,
features) and ``split_manifest``, one step per node.

The steps hand on a ``StagedScreen`` (obs and a handle on the backed raw X, never a copy of X);
the ``screen`` dataset writes its X block by block, so memory is bounded by a block of rows."""

from kedro.pipeline import Pipeline, node

from ptrag_kedro.pipelines.ingestion.nodes import (
    filter_cells,
    record_fingerprint,
    select_features,
    split_screen,
    standardise_screen,
)


def create_pipeline(**kwargs) -> Pipeline:
    return Pipeline(
        [
            node(
                standardise_screen,
                inputs=["raw_screen", "params:ingestion.columns", "params:ingestion.raw_screen"],
                outputs="standardised_screen",
                name="standardise_screen",
            ),
            node(
                filter_cells,
                inputs=["standardised_screen", "params:ingestion.features"],
                outputs="filtered_screen",
                name="filter_cells",
            ),
            node(
                split_screen,
                inputs=["filtered_screen", "params:ingestion.split", "split_lists"],
                outputs=["split_cells_screen", "draft_split_manifest"],
                name="split_screen",
            ),
            node(
                select_features,
                inputs=["split_cells_screen", "params:ingestion.features"],
                outputs="featurised_screen",
                name="select_features",
            ),
            node(
                record_fingerprint,
                inputs=["featurised_screen", "draft_split_manifest"],
                outputs=["screen", "split_manifest"],
                name="record_fingerprint",
            ),
        ]
    )
