"""Evaluation against the toy world's oracle (ground truth for evaluation only).

* ``answers``: greedy answers to held-out requests scored by the oracle (``toy_eval``).
* ``skills``: the model as a critic and as a judge (through ``rl.feedback``).
* ``rl``: AI labels and preference models against the oracle, the PPO probe, the
  over-optimisation curve.
* ``guard``: constitutional classifiers in front of a policy: attack success with and
  without the guard, false refusals, the guard's time overhead (``toy_guard_eval``).
* ``report``: the tables (and the SVG chart) of an experiment.
"""
