"""Batches cut to the length they need (``buckets.train_bucket``): the bucket values by
hand, and the preference model's scores and DPO's summed log-probs of a trimmed batch
equal those of the same pairs padded to the full ``seq_len``."""
import jax
import jax.numpy as jnp
import numpy as np

from cai_jax import models
from cai_jax.data.dialogue import HUMAN, Turn, render
from cai_jax.data.loaders import EncodePair, TrimPairs, preference_loader
from cai_jax.models.scores import pair_logprobs, pair_rewards
from cai_jax.sampling import buckets


def test_train_bucket_by_hand():
  assert [buckets.train_bucket(n) for n in (1, 16, 17, 100, 128)] == [16, 16, 32, 128, 128]
  assert [buckets.train_bucket(n) for n in (129, 139, 160, 161, 250)] == [160, 160, 160, 192,
                                                                          256]
  assert buckets.train_bucket(139, 150) == 150    # the caller's bound wins...
  assert buckets.train_bucket(139, 128) == 139    # ...but never below what is needed
  assert buckets.train_bucket(20, 512) == 32


def _pairs():
  prompts = ["How do I fix my lamp?", "Tell me about the river and the stone bridge, please."]
  return [{"prompt": render([Turn(HUMAN, p)]), "chosen": c, "rejected": r, "p_chosen": 0.7}
          for p in prompts for c, r in (("Sure, keep it dry.", "No."),
                                        ("Check the bulb and the switch first.", "Sorry."))]


def test_trimmed_batch_scores_equal_the_padded_batch(tiny_tokenizer):
  tok, seq_len = tiny_tokenizer, 96
  enc = EncodePair(tok, seq_len)
  padded = {k: np.stack([enc(p)[k] for p in _pairs()]) for k in ("tokens", "loss_mask")}
  trimmed = TrimPairs(seq_len)(padded)
  longest = max(int(np.flatnonzero(m)[-1]) + 1 for m in padded["loss_mask"].reshape(-1, seq_len))
  assert trimmed["tokens"].shape[-1] == buckets.train_bucket(longest) < seq_len
  np.testing.assert_array_equal(padded["tokens"][..., trimmed["tokens"].shape[-1]:], tok.pad_id)

  cfg = models.ModelConfig(vocab_size=512, d_model=32, n_layers=2, n_heads=4, n_kv_heads=2,
                           d_ff=64, max_seq_len=128, init_std=0.2)
  lm_graph, lm_params = models.split(models.build(cfg, seed=1))
  pm_graph, pm_params = models.split(models.build(cfg, "scalar", seed=2))
  pm_params = jax_tree_shift(pm_params)
  for fn, g, p in ((pair_logprobs, lm_graph, lm_params), (pair_rewards, pm_graph, pm_params)):
    full = np.asarray(fn(g, p, jnp.asarray(padded["tokens"]), jnp.asarray(padded["loss_mask"])))
    cut = np.asarray(fn(g, p, jnp.asarray(trimmed["tokens"]),
                        jnp.asarray(trimmed["loss_mask"])))
    assert np.ptp(full) > 1e-3                      # the pairs differ: a real comparison
    np.testing.assert_allclose(cut, full, rtol=1e-5, atol=1e-5)


def jax_tree_shift(params):
  """The scalar head starts at zero (every score 0): move every weight a little."""
  leaves, treedef = jax.tree.flatten(params)
  keys = jax.random.split(jax.random.key(3), len(leaves))
  return jax.tree.unflatten(treedef, [x + 0.05 * jax.random.normal(k, x.shape)
                                      for x, k in zip(leaves, keys)])


def test_loader_trims_in_one_process_only_when_asked(tiny_tokenizer):
  tok, pairs = tiny_tokenizer, _pairs()
  on = next(iter(preference_loader(pairs, tok, seq_len=96, batch_size=4, shuffle=False)))
  off = next(iter(preference_loader(pairs, tok, seq_len=96, batch_size=4, shuffle=False,
                                    trim=False)))
  assert off["tokens"].shape == (4, 2, 96)
  n = on["tokens"].shape[-1]
  assert n < 96
  np.testing.assert_array_equal(on["tokens"], off["tokens"][..., :n])
  np.testing.assert_array_equal(on["p_chosen"], off["p_chosen"])
