"""ptrag-kedro: retrieval-augmented prediction of single-cell responses to gene knockdowns."""

__version__ = "0.1.0"
