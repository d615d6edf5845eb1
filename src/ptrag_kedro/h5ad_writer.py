"""Writing h5ad files so that a failed write is an ``OSError``, never a crash.

HDF5 keeps written chunks in a cache and flushes them when the dataset or file closes. When the
disk is full (or a file-size limit is hit) that flush fails, and closing the objects again at
interpreter exit crashes the process (status 139). With the raw-data chunk cache off, a failed
write fails at the write itself, the file closes, and the error reaches the caller as one
``OSError``; the write speed is the same for the whole blocks written here.

Every h5ad file the project writes goes through :func:`write_anndata` (an in-memory AnnData: the
predictions, the demo's small files, a staged screen's obs/var/uns) and, for a screen larger
than memory, :func:`write_h5ad_in_blocks`.

An h5ad file written block by block (obs, var and uns first, then X appended a block of rows at
a time) keeps a screen larger than memory from ever being whole. Ingestion's staged screen and
the simulator's streamed screen both write their X through it.
"""

from __future__ import annotations

import contextlib
import os
import re
from collections.abc import Iterable, Iterator
from os import PathLike
from typing import Any

import anndata as ad
import h5py
import numpy as np
import scipy.sparse as sp
from anndata.io import sparse_dataset, write_elem

#: How HDF5's error text names the system error of a failed write.
_HDF5_ERRNO = re.compile(r"errno = (\d+)")


@contextlib.contextmanager
def open_for_writing(path: str | PathLike, mode: str = "w") -> Iterator[h5py.File]:
    """``h5py.File(path, mode)`` without the chunk cache (see the module's docstring).

    A failed system write inside HDF5 comes out of h5py as a ``RuntimeError`` or an ``OSError``
    with HDF5's whole error stack as its text; it is raised as the plain ``OSError`` of its
    errno ("No space left on device", "File too large")."""
    try:
        with h5py.File(path, mode, rdcc_nbytes=0) as handle:
            yield handle
    except (OSError, RuntimeError) as error:
        found = _HDF5_ERRNO.search(str(error))
        if found is None:
            raise
        code = int(found.group(1))
        raise OSError(code, os.strerror(code)) from error


def write_anndata(
    path: str | PathLike,
    adata: ad.AnnData,
    *,
    convert_strings_to_categoricals: bool = True,
    **dataset_kwargs: Any,
) -> None:
    """``adata.write_h5ad(path, ...)`` through :func:`open_for_writing`: the same layout as
    anndata's writer (its top-level function, element by element), without the chunk cache.

    ``dataset_kwargs`` (``compression``, ``compression_opts``...) apply to every array, as in
    ``write_h5ad``. A backed AnnData is written by anndata itself: its X is read from its own
    file while it is copied, which only anndata's writer handles.
    """
    if adata.isbacked:
        adata.write_h5ad(
            path,
            convert_strings_to_categoricals=convert_strings_to_categoricals,
            **dataset_kwargs,
        )
        return
    if convert_strings_to_categoricals:
        adata.strings_to_categoricals()
        if adata.raw is not None:
            adata.strings_to_categoricals(adata.raw.var)
    options = {key: value for key, value in dataset_kwargs.items() if value is not None}
    with open_for_writing(path, "w") as handle:
        handle.attrs["encoding-type"] = "anndata"
        handle.attrs["encoding-version"] = "0.1.0"
        if adata.X is not None:
            write_elem(handle, "X", adata.X, dataset_kwargs=options)
        if adata.raw is not None:  # written only when present: an empty raw group breaks reads
            write_elem(handle, "raw", adata.raw, dataset_kwargs=options)
        write_elem(handle, "obs", adata.obs, dataset_kwargs=options)
        write_elem(handle, "var", adata.var, dataset_kwargs=options)
        for key in ("obsm", "varm", "obsp", "varp", "layers", "uns"):
            write_elem(handle, key, dict(getattr(adata, key)), dataset_kwargs=options)


def write_h5ad_in_blocks(
    path: str | PathLike,
    skeleton: ad.AnnData,
    blocks: Iterable[Any],
    n_vars: int,
    dataset_kwargs: dict[str, Any] | None = None,
) -> None:
    """Write ``skeleton`` (an AnnData without X: obs, var, uns) to ``path``, then ``blocks``
    (sparse or dense, ``n_vars`` columns each) one under another as its X.

    The caller owns atomicity (write to a temporary path, rename on success). Refuses a file
    whose rows of X do not match ``skeleton``'s cells.
    """
    options = {key: value for key, value in (dataset_kwargs or {}).items() if value is not None}
    write_anndata(path, skeleton, **options)  # small (obs, var, uns): checked against free space
    n_obs = skeleton.n_obs
    # A 32-bit indptr cannot count past 2**31 stored values, and anndata refuses to append
    # beyond it: a screen that could hold that many gets a 64-bit one from the first block.
    wide_indptr = n_obs * n_vars >= np.iinfo(np.int32).max
    with open_for_writing(path, "a") as handle:
        written = _append_blocks(handle, blocks, options, wide_indptr)
    if written != n_obs:
        raise RuntimeError(f"{path}: wrote {written} rows of X for {n_obs} cells")


def _append_blocks(
    handle: h5py.File, blocks: Iterable[Any], options: dict[str, Any], wide_indptr: bool
) -> int:
    """Write ``blocks`` one under another as the file's X; the number of rows written."""
    written, matrix = 0, None
    for block in blocks:
        if matrix is None:
            if sp.issparse(block):
                first = sp.csr_matrix(block, copy=wide_indptr)
                if wide_indptr:
                    first.indptr = first.indptr.astype(np.int64)
                write_elem(handle, "X", first, dataset_kwargs=options)
                matrix = sparse_dataset(handle["X"])
            else:
                # Resizable along rows: later blocks extend it in place.
                dense_options = {**options, "maxshape": (None, block.shape[1])}
                write_elem(handle, "X", np.asarray(block), dataset_kwargs=dense_options)
                matrix = handle["X"]
        elif sp.issparse(block):
            matrix.append(sp.csr_matrix(block))
        else:
            matrix.resize(written + block.shape[0], axis=0)
            matrix[written:] = block
        written += block.shape[0]
    return written
