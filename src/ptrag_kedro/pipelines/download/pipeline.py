"""``download`` pipeline: the real Replogle-Nadig screen from the Hugging Face hub, saved as
``raw_screen`` (in ``--env=replogle``, where that dataset may be written)."""

from kedro.pipeline import Pipeline, node

from ptrag_kedro.pipelines.download.nodes import download_raw_screen


def create_pipeline(**kwargs) -> Pipeline:
    return Pipeline(
        [
            node(
                download_raw_screen,
                inputs="params:download",
                outputs="raw_screen",
                name="download_raw_screen",
            )
        ]
    )
