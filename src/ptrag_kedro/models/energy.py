"""Energy distance between sets of cells, batched over sentences."""

from __future__ import annotations

import torch


def energy_distance(predicted: torch.Tensor, observed: torch.Tensor) -> torch.Tensor:
    """Energy distance per sentence: ``2 E|X-Y| - E|X-X'| - E|Y-Y'|`` (V-statistic).

    Args:
        predicted: [B, S, G] predicted cells.
        observed: [B, T, G] observed cells (T may differ from S).

    Returns:
        [B] distances; zero when the two sets are identical, and differentiable everywhere
        (``torch.cdist`` gives a zero gradient at zero distance).
    """
    cross = torch.cdist(predicted, observed).mean(dim=(1, 2))  # [B]
    within_predicted = torch.cdist(predicted, predicted).mean(dim=(1, 2))
    within_observed = torch.cdist(observed, observed).mean(dim=(1, 2))
    return 2.0 * cross - within_predicted - within_observed
