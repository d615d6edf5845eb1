"""Project settings (Kedro defaults unless stated)."""

from kedro.config import OmegaConfigLoader

from ptrag_kedro.hooks import VariantRegistryHooks

HOOKS = (VariantRegistryHooks(),)

CONFIG_LOADER_CLASS = OmegaConfigLoader
CONFIG_LOADER_ARGS = {
    "base_env": "base",
    "default_run_env": "local",
    # An environment (conf/local, conf/replogle) overrides single parameters, not whole blocks.
    "merge_strategy": {"parameters": "soft"},
}
