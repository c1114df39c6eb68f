"""RL from AI feedback as library pieces: the feedback model, label diagnostics, the
preference model as a reward, and PPO (rollout -> score -> advantages -> update).

Programs (``cai_jax.programs.rl_cai``) only wire these; they are importable and testable
on their own.
"""
