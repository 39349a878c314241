"""Model factory (open_clip names, hf-hub ids, local checkpoints) and the tiny test configurations."""

from .factory import LoadedModel, create_model
from .tiny import TINY, TINY_MODELS, TINY_MULTILINGUAL, register_tiny_configs

__all__ = ["TINY", "TINY_MODELS", "TINY_MULTILINGUAL", "LoadedModel", "create_model", "register_tiny_configs"]
