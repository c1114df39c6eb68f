"""Llama-family models: config, modules, functional API, HF import/export."""
from cai_jax.models.api import (abstract, build, count_params, init, logits, merge,
                                param_shardings, split)
from cai_jax.models.config import ModelConfig
from cai_jax.models.hf import from_hf, to_hf
from cai_jax.models.transformer import ScalarHeadModel, Transformer, last_token_values

__all__ = ["ModelConfig", "ScalarHeadModel", "Transformer", "abstract", "build",
           "count_params", "from_hf", "init", "last_token_values", "logits", "merge", "param_shardings",
           "split", "to_hf"]
