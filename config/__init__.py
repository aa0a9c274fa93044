"""The typed configuration: the schema and its checks (schema), the official I-JEPA YAML mapped onto it (official),
and the values derived from it alone (derived)."""
from config.derived import grid_size, training_dtype
from config.errors import ConfigError
from config.schema import Config, config_from_dict, config_to_dict, config_to_yaml, load_config, with_overrides

__all__ = ["Config", "ConfigError", "config_from_dict", "config_to_dict", "config_to_yaml", "grid_size", "load_config",
           "training_dtype", "with_overrides"]
