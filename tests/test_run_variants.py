"""End to end: an environment that trains and reports one variant, and reporting over
variants that were never trained (slow: Kedro sessions on the tiny demo)."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
import yaml
from kedro.framework.session import KedroSession
from kedro.io import DatasetError

from tests.test_run import _run, latest, project  # noqa: F401  (project is a fixture)

pytestmark = pytest.mark.slow

#: MLflow tracking (another concern, tested on its own) left out of these runs.
NO_TRACKING = {"tracking": {"enabled": False}}


def test_an_environment_with_one_variant_trains_and_reports_it_alone(project: Path) -> None:  # noqa: F811
    local = yaml.safe_load((project / "conf/local/parameters.yml").read_text())
    (project / "conf/one_variant").mkdir()
    (project / "conf/one_variant/parameters.yml").write_text(
        yaml.safe_dump({**local, "run_variants": ["ptrag"], **NO_TRACKING})
    )
    with KedroSession.create(project_path=project, env="one_variant") as session:
        session.run()
    assert sorted(path.name for path in (project / "data/06_models").iterdir()) == ["ptrag"]
    comparison = pd.read_csv(latest(project / "data/08_reporting/comparison.csv"))
    variants = set(comparison.loc[comparison["kind"] != "baseline", "method"])
    assert variants == {"ptrag"}
    paired = pd.read_csv(latest(project / "data/08_reporting/paired_tests.csv"))
    assert set(paired["method"]) == {"ptrag"} and set(paired["role"]) == {"best baseline"}
    assert (project / "data/08_reporting/comparison.md").exists()

    # The default environment reports all four: the untrained ones are named with their command.
    with pytest.raises(DatasetError, match=r"create it first with `kedro run --pipelines=train_"):
        _run(project, "reporting", runtime_params=NO_TRACKING)
    # ... or the run names the one that exists.
    _run(project, "reporting", runtime_params={"run_variants": "ptrag", **NO_TRACKING})
