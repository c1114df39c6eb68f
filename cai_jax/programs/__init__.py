"""Gin-configurable programs, grouped by method; each phase is one short program.

* ``sl_cai``: ``generate_sl`` (critique -> revision chains), ``sl_conversations`` (the
  fine-tuning mix), ``sft`` (supervised fine-tuning; also base-model pretraining).
* ``rl_cai``: ``label_preferences`` (AI-feedback labels), ``preference_model``, ``ppo``,
  ``dpo``.
* ``evaluate``: ``judge_eval`` (the feedback model's verdicts on any models' answers, the
  SL-CAI revision win rate; for real models, where there is no oracle), ``pairwise_eval``
  (pairwise comparisons by a judge, harmlessness and helpfulness Elo with bootstrap
  intervals, the Pareto plot); both answer through ``cai_jax.evaluation.answers``.
* ``classifiers``: ``classifier_data`` (synthetic requests and answers from a
  constitution, in jailbreak shapes), ``chain_classifier_data`` (the same rows from
  SL-CAI's critique -> revision chains) and ``train_classifier`` (constitutional classifiers:
  input, output and exchange harm classifiers on a scalar head).

Programs wire the library layers (models, data, sampling, losses, train, rl); no program
module imports another. ``cai_jax.gin_setup.register`` imports them all.
"""
