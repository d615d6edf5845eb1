"""``genept`` pipeline: gene knowledge -> ``perturbation_embeddings`` (+ coverage report)."""

from kedro.pipeline import Pipeline, node

from ptrag_kedro.pipelines.genept.nodes import build_perturbation_embeddings, embed_gene_summaries


def create_pipeline(**kwargs) -> Pipeline:
    return Pipeline(
        [
            node(
                embed_gene_summaries,
                # The cache is read and rewritten under two names of one file (no cycle).
                inputs=["gene_summaries", "summary_embedding_cache", "text_model", "params:genept"],
                outputs=["summary_gene_embeddings", "summary_embedding_cache_updated"],
                name="embed_gene_summaries",
            ),
            node(
                build_perturbation_embeddings,
                inputs=[
                    "raw_gene_embeddings",
                    "summary_gene_embeddings",
                    "gene_aliases",
                    "split_manifest",
                    "params:genept",
                ],
                outputs=["perturbation_embeddings", "perturbation_embedding_report"],
                name="build_perturbation_embeddings",
            ),
        ]
    )
