"""Custom Kedro datasets: h5ad, JSON, parquet, CSV, gene-embedding files, faiss indexes, torch
models, checkpoint folders and the text model; versioned and on any fsspec filesystem like
kedro-datasets', with atomic local saves."""

from ptrag_kedro.datasets.anndata_dataset import AnnDataDataset
from ptrag_kedro.datasets.checkpoint_dataset import CheckpointDirectory, CheckpointDirectoryDataset
from ptrag_kedro.datasets.csv_dataset import CSVDataset
from ptrag_kedro.datasets.faiss_dataset import FaissIndexDataset
from ptrag_kedro.datasets.gene_embedding_dataset import GeneEmbeddingDataset
from ptrag_kedro.datasets.json_dataset import JSONDataset
from ptrag_kedro.datasets.parquet_dataset import ParquetDataset
from ptrag_kedro.datasets.text_model_dataset import TextModel, TextModelDataset
from ptrag_kedro.datasets.torch_model_dataset import TorchModelDataset

__all__ = [
    "AnnDataDataset",
    "CheckpointDirectory",
    "CheckpointDirectoryDataset",
    "CSVDataset",
    "FaissIndexDataset",
    "GeneEmbeddingDataset",
    "JSONDataset",
    "ParquetDataset",
    "TextModel",
    "TextModelDataset",
    "TorchModelDataset",
]
