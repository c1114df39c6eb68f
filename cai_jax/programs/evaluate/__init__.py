"""Evaluation programs: ``judge_eval`` (the feedback model's verdicts, no oracle needed) and
``pairwise_eval`` (pairwise comparisons and Elo scores; an oracle is optional)."""
