"""The project's layers: what each module may import, and the one kind of user error."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
from kedro.io import DatasetError

from ptrag_kedro.cli import user_message
from ptrag_kedro.errors import DatasetFileError, ParameterError, UserError, one_line

HEAVY = ("torch", "lightning", "faiss", "anndata", "scanpy", "sklearn")


def _imported_after(statement: str) -> set[str]:
    """Top-level packages in ``sys.modules`` after ``statement``, in a fresh interpreter."""
    code = f"import sys, json; {statement}; print(json.dumps(sorted(sys.modules)))"
    output = subprocess.run(
        [sys.executable, "-c", code], check=True, capture_output=True, text=True
    ).stdout
    return {name.split(".")[0] for name in json.loads(output.splitlines()[-1])}


@pytest.mark.parametrize(
    "module", ["ptrag_kedro.cli", "ptrag_kedro.parameters", "ptrag_kedro.models.config"]
)
def test_the_bottom_layer_loads_no_heavy_library(module: str) -> None:
    """The CLI (every `kedro` command), the parameters and the model config load without
    torch, faiss or anndata: `kedro --help` must not pay for them."""
    assert not _imported_after(f"import {module}") & set(HEAVY)


def test_reporting_does_not_import_the_training_pipeline() -> None:
    code = (
        "import ptrag_kedro.pipelines.reporting.pipeline; "
        "assert 'ptrag_kedro.pipelines.training' not in sys.modules, 'training pipeline'; "
        "assert 'ptrag_kedro.pipelines.training.nodes' not in sys.modules"
    )
    subprocess.run([sys.executable, "-c", f"import sys; {code}"], check=True)


def test_a_user_error_is_one_line_even_when_kedro_wraps_it() -> None:
    inner = ParameterError("training.max_steps must be >= 1,\n  got 0")
    assert user_message(inner) == "training.max_steps must be >= 1, got 0"
    # the catalog prefixes a dataset's error with the dataset's name: the name is kept
    missing = DatasetFileError("data/x.h5ad: no such h5ad file")
    try:
        try:
            raise missing
        except DatasetError as error:
            raise DatasetError(f"screen: {error}") from error
    except DatasetError as wrapped:
        assert user_message(wrapped) == "screen: data/x.h5ad: no such h5ad file"
    # an error Kedro wraps with its own dataset description shows ours alone
    try:
        try:
            raise inner
        except ParameterError as error:
            raise DatasetError(
                f"Failed while loading data from dataset X(a=1).\n{error}"
            ) from error
    except DatasetError as wrapped:
        assert user_message(wrapped) == "training.max_steps must be >= 1, got 0"


def test_a_bug_keeps_its_traceback() -> None:
    assert user_message(KeyError("screen_fingerprint")) is None
    assert user_message(DatasetError("Failed while saving: disk on fire")) is None
    # every project error a user can cause is a UserError
    from ptrag_kedro.download import DownloadError
    from ptrag_kedro.pipelines.genept.nodes import GeneEmbeddingError
    from ptrag_kedro.pipelines.ingestion.nodes import ScreenError
    from ptrag_kedro.pipelines.retrieval_index.nodes import RetrievalError
    from ptrag_kedro.provenance import StaleArtefactError
    from ptrag_kedro.variants import VariantError

    for kind in (
        DownloadError,
        GeneEmbeddingError,
        ScreenError,
        RetrievalError,
        StaleArtefactError,
        VariantError,
        ParameterError,
        DatasetFileError,
    ):
        assert issubclass(kind, UserError), kind


def test_one_line() -> None:
    assert one_line(ValueError("a\n  b\tc")) == "a b c"
    assert one_line(ValueError()) == "ValueError"
    assert one_line("x" * 50, limit=10) == "x" * 10


#: A load that can run code from a file, as it appears in source.
UNSAFE = re.compile(
    r"weights_only\s*=\s*False|allow_pickle\s*=\s*True|pickle\.loads?\(|"
    r"torch\.load\((?![^)]*weights_only\s*=\s*True)[^)]*\)|np\.load\((?![^)]*allow_pickle\s*=\s*False)"
)


def test_no_file_is_loaded_in_a_way_that_can_run_code() -> None:
    """Every torch.load is weights_only=True, every np.load allow_pickle=False, no pickle.load
    outside the restricted (class-refusing) unpickler: a new unsafe load fails here."""
    root = Path(__file__).resolve().parents[1]
    found = []
    for folder in ("src", "benchmarks"):
        for path in sorted((root / folder).rglob("*.py")):
            text = path.read_text()
            for match in UNSAFE.finditer(text):
                line = text.count("\n", 0, match.start()) + 1
                found.append(f"{path.relative_to(root)}:{line}: {match.group(0)}")
    assert found == []
    # the check itself catches each unsafe form
    for unsafe in (
        "torch.load(path)",
        "torch.load(path, weights_only=False)",
        "np.load(path)",
        "np.load(path, allow_pickle=True)",
        "pickle.load(handle)",
        "pickle.loads(data)",
    ):
        assert UNSAFE.search(unsafe), unsafe
    for safe in (
        "torch.load(path, map_location='cpu', weights_only=True)",
        "np.load(p, allow_pickle=False)",
    ):
        assert not UNSAFE.search(safe), safe
