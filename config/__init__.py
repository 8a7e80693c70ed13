"""Configuration: YAML files validated into typed models (schema in ``schema.py``).

The YAML examples live beside this module (``server.yaml``, ``prompts.yaml``).
"""

from .loader import ConfigError, load_prompts, load_server
from .schema import PromptsConfig, ServerConfig

__all__ = ["ConfigError", "PromptsConfig", "ServerConfig", "load_prompts", "load_server"]
