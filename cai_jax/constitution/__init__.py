"""Constitutions: loading and validation, seeded principle sampling, prompt templates.

Typical use::

  from cai_jax import constitution as cc
  c = cc.load_constitution("constitutions/default.json")
  principles = cc.sample_critique_principles(c, seed=0, prompt_index=17, num_rounds=4)
  prompt = cc.critique_prompt(conversation, principles[0], c.critique_exemplars)
"""
from cai_jax.constitution.load import (load_constitution, parse_constitution,
                                       resolve_constitution_path)
from cai_jax.constitution.sampling import (draw_indices, sample_comparison_principles,
                                           sample_critique_principles)
from cai_jax.constitution.schema import (SCHEMA_VERSION, ComparisonExemplar,
                                         ComparisonPrinciple, Constitution, ConstitutionError,
                                         CritiquePrinciple, Exemplar, Problem)
from cai_jax.constitution.templates import (ANSWER_PREFIX, COT_ANSWER, COT_PREFIX, OPTION_A,
                                            OPTION_B, OPTIONS, Prompt, comparison_prompt,
                                            comparison_question, cot_answer_prompt,
                                            critique_prompt, direct_revision_prompt,
                                            first_exemplars,
                                            initial_prompt, latest_response, parse_answer,
                                            revised_dialogue, revision_prompt, trim_reasoning)

__all__ = [
    "ANSWER_PREFIX", "COT_ANSWER", "COT_PREFIX", "OPTION_A", "OPTION_B", "OPTIONS",
    "SCHEMA_VERSION", "ComparisonExemplar", "ComparisonPrinciple", "Constitution",
    "ConstitutionError", "CritiquePrinciple", "Exemplar", "Problem", "Prompt",
    "comparison_prompt", "comparison_question", "cot_answer_prompt", "critique_prompt",
    "direct_revision_prompt", "first_exemplars", "draw_indices", "initial_prompt", "latest_response",
    "load_constitution", "parse_answer", "parse_constitution", "resolve_constitution_path",
    "revised_dialogue", "revision_prompt", "sample_comparison_principles",
    "sample_critique_principles", "trim_reasoning",
]
