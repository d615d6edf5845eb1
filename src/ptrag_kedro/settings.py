"""Project settings (Kedro defaults unless stated)."""

import warnings

from kedro.config import OmegaConfigLoader

from ptrag_kedro.hooks import VariantRegistryHooks
from ptrag_kedro.tracking import RunTrackingHooks

# Kedro 1.7's own use of omegaconf 2.4, and Lightning 2.6's of torch's pytree API, warn on every
# run; there is nothing for a user to do about either.
warnings.filterwarnings(
    "ignore", message=r"register_new_resolver\(\) is deprecated", category=UserWarning
)
warnings.filterwarnings("ignore", message=r"`isinstance\(treespec, LeafSpec\)` is deprecated")

HOOKS = (VariantRegistryHooks(), RunTrackingHooks())

CONFIG_LOADER_CLASS = OmegaConfigLoader
CONFIG_LOADER_ARGS = {
    "base_env": "base",
    "default_run_env": "local",
    # An environment (conf/local, conf/replogle) overrides single parameters, not whole blocks.
    "merge_strategy": {"parameters": "soft"},
}
