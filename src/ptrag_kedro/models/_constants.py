"""Keys of the batch dicts that the training loop hands to the module."""

CONTROL = "control"  # [B, S, G] basal (control) cells of the sentence's line
TARGET = "target"  # [B, S, G] observed perturbed cells
PERTURBATION = "perturbation"  # [B, E] the query perturbation's embedding
CANDIDATES = "candidates"  # [B, K, E] embeddings of its retrieved train perturbations
BATCH_INDEX = (
    "batch_index"  # [B, S] batch (gem group) of each control cell, for the optional embedding
)
