"""Hand-set classifiers for guard tests: the score after a token is ~0.98 when that token
is ``bad_token`` and ~0.02 otherwise (d_model 16), whatever came before it."""
import jax.numpy as jnp
import numpy as np

from cai_jax import models
from cai_jax.models.store import save_model


def _config(vocab: int) -> models.ModelConfig:
  return models.ModelConfig(vocab_size=vocab, d_model=16, n_layers=1, n_heads=2,
                            n_kv_heads=1, d_ff=32)


def token_classifier(bad_token: int, vocab: int):
  """(graphdef, params) of the classifier: attention and MLP write nothing, so the final
  norm of the embedding (+-e0) is +-sqrt(d) e0 and the head reads coordinate 0."""
  cfg = _config(vocab)
  graphdef, params = models.init(cfg, "scalar")
  embed = np.zeros((vocab, cfg.d_model), np.float32)
  embed[:, 0] = -1.0
  embed[bad_token, 0] = 1.0
  params["backbone"]["embed_vd"] = jnp.asarray(embed)
  layer = params["backbone"]["layers"][0]
  layer["attn"]["wo_nkd"] = jnp.zeros_like(layer["attn"]["wo_nkd"])
  layer["mlp"]["w_down_fd"] = jnp.zeros_like(layer["mlp"]["w_down_fd"])
  params["head_w_d"] = jnp.zeros((cfg.d_model,), jnp.float32).at[0].set(1.0)
  return graphdef, params


def save_token_classifier(bad_token: int, vocab: int, kind: str, path: str,
                          tokenizer_path: str) -> str:
  """The classifier saved as a ``train_classifier`` model of ``kind``; its folder."""
  _, params = token_classifier(bad_token, vocab)
  return save_model(path, params, _config(vocab), kind="scalar",
                    info={"classifier": kind, "tokenizer_path": tokenizer_path})
