"""Custom Kedro datasets: h5ad, JSON (atomic, optional) and gene-embedding files."""

from ptrag_kedro.datasets.anndata_dataset import AnnDataDataset
from ptrag_kedro.datasets.gene_embedding_dataset import GeneEmbeddingDataset
from ptrag_kedro.datasets.json_dataset import JSONDataset

__all__ = ["AnnDataDataset", "GeneEmbeddingDataset", "JSONDataset"]
