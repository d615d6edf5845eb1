"""Our predictions in the form Arc's cell-eval expects, to compare metric definitions.

cell-eval takes the control mean of the predicted AnnData from control cells inside it; giving it
the real controls makes its ``pearson_delta`` and ``mse`` the same quantities as ours.
"""

from __future__ import annotations

from typing import Any

import anndata as ad
import numpy as np
import pandas as pd

from ptrag_kedro.expression_rows import ExpressionRows


def cell_eval_pair(
    predictions: ad.AnnData, screen: ad.AnnData, cell_line: str, control_label: str
) -> Any:
    """A cell-eval ``PerturbationAnndataPair`` of one line: real test + control vs predicted."""
    from cell_eval._types import PerturbationAnndataPair

    obs = screen.obs
    rows = (obs["cell_line"] == cell_line).to_numpy() & obs["split"].isin(
        ["test", "control"]
    ).to_numpy()
    real = ad.AnnData(
        X=ExpressionRows.of(screen)[np.flatnonzero(rows)],
        obs=obs.loc[rows, ["perturbation"]].astype(str),
        var=pd.DataFrame(index=screen.var_names.astype(str)),
    )
    in_line = (predictions.obs["cell_line"] == cell_line).to_numpy()
    predicted = ad.AnnData(
        X=np.asarray(predictions.X[in_line]),
        obs=predictions.obs.loc[in_line, ["perturbation"]].astype(str),
        var=real.var,
    )
    predicted = ad.concat([predicted, real[(real.obs["perturbation"] == control_label).to_numpy()]])
    return PerturbationAnndataPair(
        real=real, pred=predicted, pert_col="perturbation", control_pert=control_label
    )
