"""The unseen_gene split: val/test genes are train in no cell line."""

from __future__ import annotations

import anndata as ad
import pytest

from ptrag_kedro.pipelines.ingestion.nodes import ScreenError
from ptrag_kedro.schema import CONTROL, TEST, TRAIN, VAL, WITHHELD
from tests.conftest import ingest


def _unseen(params: dict, **split) -> dict:
    params["split"].update({"mode": "unseen_gene", **split})
    return params


def _held_genes(manifest: dict) -> set[str]:
    return {g for entry in manifest["cell_lines"].values() for g in (*entry[VAL], *entry[TEST])}


def _train_genes(manifest: dict) -> set[str]:
    return {g for entry in manifest["cell_lines"].values() for g in entry[TRAIN]}


def test_val_and_test_genes_are_train_in_no_line(
    tiny_screen: ad.AnnData, ingestion_params: dict
) -> None:
    screen, manifest = ingest(tiny_screen.copy(), _unseen(ingestion_params))
    lines = manifest["cell_lines"]
    val, test = set(lines["hepg2"][VAL]), set(lines["hepg2"][TEST])
    assert val and test and not val & test
    assert not (val | test) & _train_genes(manifest)
    # only the held-out line evaluates them; elsewhere their groups are withheld, and dropped
    for line, entry in lines.items():
        if line != "hepg2":
            assert not entry[VAL] and not entry[TEST]
            perturbed_there = set(tiny_screen.obs.loc[tiny_screen.obs["cell_line"] == line, "gene"])
            assert set(entry[WITHHELD]) == (val | test) & perturbed_there
    assert any(entry[WITHHELD] for entry in lines.values())  # the tiny screen has some
    obs = screen.obs
    outside = obs["cell_line"] != "hepg2"
    assert not obs.loc[outside, "perturbation"].isin(val | test).any()
    assert set(obs.loc[obs["split"] == TEST, "perturbation"]) == test
    assert set(obs.loc[obs["split"] == VAL, "cell_line"]) == {"hepg2"}
    # the fractions are of the held-out line's genes
    in_heldout = sorted(set(lines["hepg2"][TRAIN]) | val | test)
    assert len(test) == round(0.3 * len(in_heldout)) and len(val) == round(0.1 * len(in_heldout))
    # controls of every line stay
    assert set(obs.loc[obs["split"] == CONTROL, "cell_line"]) == set(lines)
    assert manifest["mode"] == "unseen_gene" and manifest["other_lines"] == "withhold"


def test_other_lines_can_evaluate_the_held_genes_too(
    tiny_screen: ad.AnnData, ingestion_params: dict
) -> None:
    withheld, _ = ingest(tiny_screen.copy(), _unseen(ingestion_params))
    screen, manifest = ingest(tiny_screen.copy(), _unseen(ingestion_params, other_lines="evaluate"))
    held = _held_genes(manifest)
    assert not held & _train_genes(manifest)
    assert len(set(screen.obs.loc[screen.obs["split"] == TEST, "cell_line"])) > 1
    assert not any(entry[WITHHELD] for entry in manifest["cell_lines"].values())
    # nothing dropped here; withholding dropped exactly the other lines' held-gene groups
    assert set(withheld.obs_names) < set(screen.obs_names)
    dropped = screen.obs.loc[~screen.obs_names.isin(withheld.obs_names)]
    assert (dropped["cell_line"] != "hepg2").all() and dropped["perturbation"].isin(held).all()


def test_with_no_held_out_line_genes_are_drawn_from_every_line(
    tiny_screen: ad.AnnData, ingestion_params: dict
) -> None:
    screen, manifest = ingest(tiny_screen.copy(), _unseen(ingestion_params, heldout_cell_line=""))
    every = set(tiny_screen.obs["gene"]) - {"non-targeting"}
    held = _held_genes(manifest)
    assert not held & _train_genes(manifest)
    assert _train_genes(manifest) | held == every
    test_genes = {g for entry in manifest["cell_lines"].values() for g in entry[TEST]}
    assert len(test_genes) == round(0.3 * len(every))
    assert manifest["heldout_cell_line"] is None
    assert len(set(screen.obs.loc[screen.obs["split"] == TEST, "cell_line"])) > 1


def test_a_split_file_names_the_unseen_genes(
    tiny_screen: ad.AnnData, ingestion_params: dict
) -> None:
    in_heldout = tiny_screen.obs["cell_line"] == "hepg2"
    perturbed = sorted(set(tiny_screen.obs.loc[in_heldout, "gene"]) - {"non-targeting"})
    lists = {"val": perturbed[:2], "test": [*perturbed[2:6], "NOT_A_GENE"]}
    params = _unseen(ingestion_params, split_file="lists.json")
    _, manifest = ingest(tiny_screen.copy(), params, lists)
    assert manifest["cell_lines"]["hepg2"][TEST] == perturbed[2:6]
    assert manifest["missing_from_screen"]["test"] == ["NOT_A_GENE"]
    assert not set(perturbed[:6]) & _train_genes(manifest)
    with pytest.raises(ScreenError, match="none of the 1 'val' genes is perturbed in cell line"):
        ingest(tiny_screen.copy(), params, {"val": ["NOT_A_GENE"], "test": perturbed[:2]})


def test_the_split_seed_changes_the_unseen_genes(
    tiny_screen: ad.AnnData, ingestion_params: dict
) -> None:
    _, first = ingest(tiny_screen.copy(), _unseen(ingestion_params))
    _, second = ingest(tiny_screen.copy(), _unseen(ingestion_params, seed=1))
    assert _held_genes(first) != _held_genes(second)
    assert first["screen_fingerprint"] != second["screen_fingerprint"]
