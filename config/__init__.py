"""The typed configuration: what a config is (sections), how a YAML file or an official I-JEPA one becomes one
(load, official), and the values derived from it alone (derived)."""
from config.derived import grid_size, mask_sampler, training_dtype
from config.errors import ConfigError
from config.load import config_from_dict, config_to_dict, config_to_yaml, load_config, with_overrides
from config.sections import Config

__all__ = ["Config", "ConfigError", "config_from_dict", "config_to_dict", "config_to_yaml", "grid_size", "load_config",
           "mask_sampler", "training_dtype", "with_overrides"]
