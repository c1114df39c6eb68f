"""Registers the toy world's gin configurables (its phases and evaluators).

The toy world stays at the edge: generic code never imports it. Its experiment files do,
with ``import cai_jax.toyworld.configurables`` at their top.
"""
# pylint: disable=unused-import
import cai_jax.toyworld.evaluation.answers  # noqa: F401
import cai_jax.toyworld.evaluation.guard  # noqa: F401
import cai_jax.toyworld.evaluation.pairwise  # noqa: F401
import cai_jax.toyworld.evaluation.report  # noqa: F401
import cai_jax.toyworld.evaluation.rl  # noqa: F401
import cai_jax.toyworld.phases  # noqa: F401
import cai_jax.toyworld.polis  # noqa: F401
import cai_jax.toyworld.seeds  # noqa: F401
