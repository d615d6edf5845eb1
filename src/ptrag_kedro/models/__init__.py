"""Torch modules: STATE backbone, retrieval blocks (none / vanilla / PT-RAG / response), energy
distance, cell sentences and the response bank."""

from ptrag_kedro.models.energy import energy_distance
from ptrag_kedro.models.module import LossOutput, ModelConfig, ModelOutput, PerturbationModel

__all__ = ["LossOutput", "ModelConfig", "ModelOutput", "PerturbationModel", "energy_distance"]
