"""The project's h5ad writer: anndata's layout, and a full disk as one ``OSError``."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import anndata as ad
import h5py
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

from ptrag_kedro.h5ad_writer import write_anndata


def _rich_anndata(with_raw: bool) -> ad.AnnData:
    rng = np.random.default_rng(0)
    adata = ad.AnnData(
        sp.random(30, 12, density=0.3, format="csr", random_state=1, dtype=np.float32),
        obs=pd.DataFrame(
            {"perturbation": rng.choice(["a", "b"], 30), "n": np.arange(30)},
            index=[f"cell{i}" for i in range(30)],
        ),
        var=pd.DataFrame(index=[f"gene{i}" for i in range(12)]),
    )
    adata.obsm["X_hvg"] = rng.normal(size=(30, 4)).astype(np.float32)
    adata.varm["loadings"] = rng.normal(size=(12, 2))
    adata.obsp["distances"] = sp.identity(30, format="csr")
    adata.layers["counts"] = adata.X.copy()
    adata.uns["ptrag"] = {"fingerprint": "abc", "n": 3}
    if with_raw:
        adata.raw = adata.copy()
    return adata


def _group_keys(path: Path) -> list[str]:
    with h5py.File(path, "r") as handle:
        names: list[str] = []
        handle.visit(names.append)
        return sorted(names)


@pytest.mark.parametrize("with_raw", [False, True])
def test_write_anndata_writes_what_anndata_writes(tmp_path: Path, with_raw: bool) -> None:
    """Same groups as anndata's own writer (no empty ``raw``), same content, and a backed read
    of the file comes into memory (the empty raw group of ``write_elem(f, "/", …)`` broke it)."""
    adata = _rich_anndata(with_raw)
    ours, theirs = tmp_path / "ours.h5ad", tmp_path / "theirs.h5ad"
    write_anndata(ours, adata.copy(), compression="gzip")
    adata.copy().write_h5ad(theirs, compression="gzip")
    assert _group_keys(ours) == _group_keys(theirs)
    assert ("raw" in _group_keys(ours)) is with_raw
    back = ad.read_h5ad(ours, backed="r").to_memory()
    expected = ad.read_h5ad(theirs)
    assert (back.X != expected.X).nnz == 0
    pd.testing.assert_frame_equal(back.obs, expected.obs)
    np.testing.assert_array_equal(back.obsm["X_hvg"], expected.obsm["X_hvg"])
    np.testing.assert_array_equal(back.varm["loadings"], expected.varm["loadings"])
    assert (back.layers["counts"] != expected.layers["counts"]).nnz == 0
    assert back.uns["ptrag"]["fingerprint"] == "abc"
    with h5py.File(ours, "r") as handle:
        assert handle["X"].attrs["encoding-type"] == "csr_matrix"
        assert handle["X"]["data"].compression == "gzip"


_FULL_DISK = textwrap.dedent(
    """
    import resource, signal, sys
    import anndata as ad, numpy as np
    from ptrag_kedro.h5ad_writer import write_anndata
    resource.setrlimit(resource.RLIMIT_FSIZE, (2_000_000, 2_000_000))
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails with EFBIG
    adata = ad.AnnData(np.random.default_rng(0).normal(size=(4000, 300)).astype(np.float32))
    try:
        write_anndata(sys.argv[1], adata)
    except OSError as error:
        print("errno", error.errno)
        sys.exit(3)
    """
)


def test_a_full_disk_during_an_anndata_write_is_one_oserror(tmp_path: Path) -> None:
    """A write that stops part-way (file-size limit: EFBIG, as ENOSPC on a full disk) raises one
    ``OSError`` with its errno and the process exits cleanly. anndata's own writer lets a
    RuntimeError from HDF5's cached chunks escape instead, or crashes the process at exit."""
    script = tmp_path / "full_disk.py"
    script.write_text(_FULL_DISK)
    done = subprocess.run(
        [sys.executable, str(script), str(tmp_path / "out.h5ad")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 3, done.stdout + done.stderr[-2000:]
    assert done.stdout.strip() == "errno 27"
    assert "Traceback" not in done.stderr
