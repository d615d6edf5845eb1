"""Torch modules: STATE backbone, retrieval blocks (none / vanilla / PT-RAG / response), energy
distance, cell sentences, the response bank, and the model record training writes.

The torch-free parts (``config``, ``record``'s types) load without torch: the package itself
imports torch only when one of its modules is asked for (``parameters.py`` and the CLI read
:class:`ModelConfig` without paying for torch).
"""

from __future__ import annotations

import importlib
from typing import Any

from ptrag_kedro.models.config import ModelConfig, SentenceSpec

#: name -> the submodule that defines it, imported on first use
_LAZY = {
    "LossOutput": "module",
    "ModelOutput": "module",
    "PerturbationModel": "module",
    "energy_distance": "energy",
}

__all__ = ["ModelConfig", "SentenceSpec", *_LAZY]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(f"{__name__}.{_LAZY[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
