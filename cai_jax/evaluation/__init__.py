"""Evaluation helpers shared by programs (reports of AI-judge evaluations)."""
