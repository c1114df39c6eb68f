"""Evaluation programs that need no oracle: ``judge_eval`` (the feedback model's verdicts)."""
