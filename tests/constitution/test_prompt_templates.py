"""Golden tests of the rendered prompt formats (the exact text each template produces)."""
import pytest

from cai_jax.constitution import (ComparisonExemplar, ComparisonPrinciple, CritiquePrinciple,
                                  Exemplar, comparison_prompt, cot_answer_prompt,
                                  critique_prompt, direct_revision_prompt, initial_prompt,
                                  latest_response, parse_answer, revised_dialogue,
                                  revision_prompt, trim_reasoning)
from cai_jax.data.dialogue import Turn, render

HARM = CritiquePrinciple("harm", "Is the last response harmful? Explain.",
                         "Rewrite the response to be harmless and say why.")
KIND = CritiquePrinciple("kind", "Is the last response unkind?", "Rewrite it kindly.")
LESS_HARMFUL = ComparisonPrinciple("less-harmful", "Which response is less harmful?")
EXEMPLAR = Exemplar("ex", (
    Turn("Human", "Hi"), Turn("Assistant", "Go away."),
    Turn("CritiqueRequest", "Is the last response unkind?"), Turn("Critique", "Yes, it is rude."),
    Turn("RevisionRequest", "Rewrite it kindly."), Turn("Revision", "Hello! How can I help?")))
CONVERSATION = (Turn("Human", "How do I get into my neighbour's house?"),
                Turn("Assistant", "Use a card on the latch."))


def _text(prompt) -> str:
  """The prompt as ``render`` writes it, plus the open turn's prefix."""
  out = render(prompt.turns, open_role=prompt.open_role)
  assert prompt.text() == (f"{out} {prompt.prefix}" if prompt.prefix else out)
  return prompt.text()


def test_initial_prompt():
  p = initial_prompt("How do I get into my neighbour's house?")
  assert _text(p) == "\n\nHuman: How do I get into my neighbour's house?\n\nAssistant:"
  assert p.conversation("Use a card on the latch.") == CONVERSATION
  dialogue = (Turn("Human", "Hi"), Turn("Assistant", "Hello"), Turn("Human", "Help me."))
  assert initial_prompt(dialogue).turns == dialogue
  with pytest.raises(ValueError, match="end with a Human"):
    initial_prompt(CONVERSATION)


def test_critique_then_revision():
  crit = critique_prompt(CONVERSATION, HARM)
  assert _text(crit) == (
      "\n\nHuman: How do I get into my neighbour's house?"
      "\n\nAssistant: Use a card on the latch."
      "\n\nCritiqueRequest: Is the last response harmful? Explain."
      "\n\nCritique:")
  rev = revision_prompt(crit.conversation("It helps break into a home."), HARM)
  assert _text(rev) == (
      "\n\nHuman: How do I get into my neighbour's house?"
      "\n\nAssistant: Use a card on the latch."
      "\n\nCritiqueRequest: Is the last response harmful? Explain."
      "\n\nCritique: It helps break into a home."
      "\n\nRevisionRequest: Rewrite the response to be harmless and say why."
      "\n\nRevision:")
  # The revision prompt extends the critique prompt: the sampler reuses that prefix.
  assert rev.turns[:len(crit.turns) + 1] == crit.complete("It helps break into a home.")


def test_few_shot_exemplars_come_first():
  crit = critique_prompt(CONVERSATION, HARM, [EXEMPLAR])
  assert crit.num_exemplar_turns == 6
  assert _text(crit) == (
      "\n\nHuman: Hi\n\nAssistant: Go away.\n\nCritiqueRequest: Is the last response unkind?"
      "\n\nCritique: Yes, it is rude.\n\nRevisionRequest: Rewrite it kindly."
      "\n\nRevision: Hello! How can I help?"
      "\n\nHuman: How do I get into my neighbour's house?"
      "\n\nAssistant: Use a card on the latch."
      "\n\nCritiqueRequest: Is the last response harmful? Explain."
      "\n\nCritique:")
  assert crit.conversation() == CONVERSATION + (Turn("CritiqueRequest", HARM.critique_request),)


def test_two_round_chain_continues_one_context():
  crit1 = critique_prompt(CONVERSATION, HARM, [EXEMPLAR])
  rev1 = revision_prompt(crit1.conversation("It helps break in."), HARM, [EXEMPLAR])
  crit2 = critique_prompt(rev1.conversation("I can't help you enter it."), KIND, [EXEMPLAR])
  assert crit2.turns[:len(rev1.turns) + 1] == rev1.complete("I can't help you enter it.")
  rev2 = revision_prompt(crit2.conversation("It could be warmer."), KIND, [EXEMPLAR])
  final = rev2.conversation("Sorry, I can't help with entering it; ask your neighbour.")
  assert render(final[2:], open_role=None) == (
      "\n\nCritiqueRequest: Is the last response harmful? Explain."
      "\n\nCritique: It helps break in."
      "\n\nRevisionRequest: Rewrite the response to be harmless and say why."
      "\n\nRevision: I can't help you enter it."
      "\n\nCritiqueRequest: Is the last response unkind?"
      "\n\nCritique: It could be warmer."
      "\n\nRevisionRequest: Rewrite it kindly."
      "\n\nRevision: Sorry, I can't help with entering it; ask your neighbour.")
  assert latest_response(final) == "Sorry, I can't help with entering it; ask your neighbour."
  assert revised_dialogue(final) == (
      CONVERSATION[0],
      Turn("Assistant", "Sorry, I can't help with entering it; ask your neighbour."))


def test_direct_revision_skips_critiques():
  p = direct_revision_prompt(CONVERSATION, HARM, [EXEMPLAR])
  assert p.num_exemplar_turns == 4
  assert _text(p) == (
      "\n\nHuman: Hi\n\nAssistant: Go away.\n\nRevisionRequest: Rewrite it kindly."
      "\n\nRevision: Hello! How can I help?"
      "\n\nHuman: How do I get into my neighbour's house?"
      "\n\nAssistant: Use a card on the latch."
      "\n\nRevisionRequest: Rewrite the response to be harmless and say why."
      "\n\nRevision:")


def test_template_misuse_is_an_error():
  with pytest.raises(ValueError, match="end with a Assistant or Revision"):
    critique_prompt(CONVERSATION[:1], HARM)
  crit = critique_prompt(CONVERSATION, HARM)
  with pytest.raises(ValueError, match="same principle"):
    revision_prompt(crit.conversation("A critique."), KIND)
  with pytest.raises(ValueError, match="end with a Critique"):
    revision_prompt(CONVERSATION, HARM)
  with pytest.raises(TypeError, match="sequence of Turn"):
    critique_prompt([("Human", "hi")], HARM)


def test_comparison_prompt():
  p = comparison_prompt("How do I get into my neighbour's house?", "Use a card on the latch.",
                        "I can't help you enter a home that is not yours.", LESS_HARMFUL)
  assert _text(p) == (
      "\n\nHuman: Consider the following conversation between a human and an assistant:"
      "\nHuman: How do I get into my neighbour's house?"
      "\nWhich response is less harmful?"
      "\nOptions:"
      "\n(A) Use a card on the latch."
      "\n(B) I can't help you enter a home that is not yours."
      "\n\nAssistant: The answer is:")
  assert p.open_role == "Assistant" and p.prefix == "The answer is:"
  assert render(p.complete("(B)")) == p.text() + " (B)"
  assert p.complete("(B)")[-1] == Turn("Assistant", "The answer is: (B)")


def test_comparison_prompt_multi_turn_conversation():
  dialogue = (Turn("Human", "Hi"), Turn("Assistant", "Hello"), Turn("Human", "Help me."))
  p = comparison_prompt(dialogue, "Sure.", "No.", "Which is kinder?")
  assert p.turns[-1].text == (
      "Consider the following conversation between a human and an assistant:"
      "\nHuman: Hi\nAssistant: Hello\nHuman: Help me."
      "\nWhich is kinder?\nOptions:\n(A) Sure.\n(B) No.")
  with pytest.raises(ValueError, match="end with a Human"):
    comparison_prompt(CONVERSATION, "a", "b", LESS_HARMFUL)


COMPARISON_EXEMPLAR = ComparisonExemplar(
    "cx", (Turn("Human", "Hi"),), "Hello!", "Go away.", "Which is kinder?", "A",
    "(A) greets the human; (B) is rude.")


def test_chain_of_thought_comparison():
  p = comparison_prompt("Hack my neighbour's wifi.", "Here is how.", "I won't; it is illegal.",
                        LESS_HARMFUL, chain_of_thought=True, exemplars=[COMPARISON_EXEMPLAR])
  assert p.num_exemplar_turns == 2
  assert _text(p) == (
      "\n\nHuman: Consider the following conversation between a human and an assistant:"
      "\nHuman: Hi\nWhich is kinder?\nOptions:\n(A) Hello!\n(B) Go away."
      "\n\nAssistant: Let's think step-by-step: (A) greets the human; (B) is rude."
      "\nTherefore the answer is: (A)"
      "\n\nHuman: Consider the following conversation between a human and an assistant:"
      "\nHuman: Hack my neighbour's wifi.\nWhich response is less harmful?\nOptions:"
      "\n(A) Here is how.\n(B) I won't; it is illegal."
      "\n\nAssistant: Let's think step-by-step:")
  # The model's reasoning (it may run on into an answer of its own; that part is dropped).
  answer = cot_answer_prompt(p, " (A) helps with a crime; (B) declines.\nTherefore the answer"
                                " is: (B)")
  assert answer.turns == p.turns
  assert _text(answer).endswith(
      "\n\nAssistant: Let's think step-by-step: (A) helps with a crime; (B) declines."
      "\nTherefore the answer is:")
  with pytest.raises(ValueError, match="chain_of_thought=True"):
    cot_answer_prompt(comparison_prompt("q", "a", "b", LESS_HARMFUL), "reasoning")


def test_exemplars_without_chain_of_thought_show_only_the_answer():
  p = comparison_prompt("q?", "a", "b", LESS_HARMFUL, exemplars=[COMPARISON_EXEMPLAR])
  assert p.turns[1] == Turn("Assistant", "The answer is: (A)")
  bare = ComparisonExemplar("bare", (Turn("Human", "Hi"),), "a", "b", "Which?", "B")
  with pytest.raises(ValueError, match="no reasoning"):
    comparison_prompt("q?", "a", "b", LESS_HARMFUL, chain_of_thought=True, exemplars=[bare])


def test_reasoning_and_answer_parsing():
  assert trim_reasoning(" B is safer. The answer is: (B)") == "B is safer."
  assert trim_reasoning("no marker here ") == "no marker here"
  assert trim_reasoning("one.\n\n two.\nTHE ANSWER IS: (A)") == "one.\n two."
  assert parse_answer(" (B) because") == "B" and parse_answer("(A)") == "A"
  assert parse_answer("A") is None


def test_token_ids_put_the_option_where_training_puts_it(tmp_path):
  """Scoring position: prompt ids + the option token == the completed turn's ids (no eos)."""
  from cai_jax.data.tokenizer import train_tokenizer  # pylint: disable=import-outside-toplevel
  text = [
      comparison_prompt("How do I get into a house?", "Use a card.", "I can't help.",
                        LESS_HARMFUL, chain_of_thought=cot).text() + " reason (A) (B)"
      for cot in (False, True)] * 20
  tok = train_tokenizer(text, model_prefix=str(tmp_path / "tok"), vocab_size=320)
  p = comparison_prompt("How do I get into a house?", "Use a card.", "I can't help.",
                        LESS_HARMFUL)
  cot = cot_answer_prompt(comparison_prompt("How do I get into a house?", "Use a card.",
                                            "I can't help.", LESS_HARMFUL,
                                            chain_of_thought=True), "(A) helps a break-in.")
  for prompt in (p, cot):
    for option in ("(A)", "(B)"):
      full = tok.encode_dialogue(prompt.complete(option)).ids
      assert full[-1] == tok.eos_id
      assert prompt.token_ids(tok) + [tok.single_token_id(option)] == full[:-1]
