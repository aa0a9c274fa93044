"""The typed configuration: the schema and its checks (schema), the official I-JEPA YAML mapped onto it (official),
and the values derived from it (derived)."""
from config.derived import (deepspeed_config, global_batch_size, grid_size, iterations_per_epoch, schedule_steps,
                            training_dtype)
from config.errors import ConfigError
from config.schema import Config, config_from_dict, config_to_dict, config_to_yaml, load_config, with_overrides

__all__ = ["Config", "ConfigError", "config_from_dict", "config_to_dict", "config_to_yaml", "deepspeed_config",
           "global_batch_size", "grid_size", "iterations_per_epoch", "load_config", "schedule_steps", "training_dtype",
           "with_overrides"]
