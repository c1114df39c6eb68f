"""Gin-configurable programs, grouped by method; each phase is one short program.

* ``sl_cai``: ``generate_sl`` (critique -> revision chains), ``sl_conversations`` (the
  fine-tuning mix), ``sft`` (supervised fine-tuning; also base-model pretraining).
* ``rl_cai``: ``label_preferences`` (AI-feedback labels), ``preference_model``, ``ppo``,
  ``dpo``.

Programs wire the library layers (models, data, sampling, losses, train, rl); no program
module imports another. ``cai_jax.gin_setup.register`` imports them all.
"""
