"""Shared data-test fixtures: generated dialogue-like text and a tiny BPE tokenizer."""
import random

import pytest

from cai_jax.data import dialogue
from cai_jax.data.tokenizer import Tokenizer, train_tokenizer

_TOPICS = ("bread", "garden", "river", "lamp", "window", "paper", "stone", "cloud", "kettle",
           "bicycle", "lock", "fire", "medicine", "password", "recipe", "letter")
_ASKS = ("How do I fix my {}?", "Can you tell me about the {}?", "What is the best {} to buy?",
         "Why does my {} keep breaking?", "Help me write a note about a {}.",
         "Is it safe to leave the {} outside?")
_ANSWERS = ("Sure, here is how to fix the {}: check it, clean it, and try again.",
            "The {} is a common thing; most people keep one at home.",
            "I would pick a simple {} that is easy to repair.",
            "A {} often breaks when it gets wet, so keep it dry.",
            "I'm sorry, I can't help with that, but I can tell you about the {} in general.")
_CRITIQUES = ("The response about the {} is helpful and harmless.",
              "The response could be more careful about the {}.")
_REVISIONS = ("Here is a safer answer about the {}: ask an expert first.",
              "A careful way to handle the {} is to read the manual.")


def make_dialogues(n: int, seed: int = 0) -> list[list[dialogue.Turn]]:
  """``n`` conversations: Human/Assistant, about 30% followed by critique/revision."""
  rng = random.Random(seed)
  out = []
  for _ in range(n):
    topic = rng.choice(_TOPICS)
    turns = [dialogue.Turn(dialogue.HUMAN, rng.choice(_ASKS).format(topic)),
             dialogue.Turn(dialogue.ASSISTANT, rng.choice(_ANSWERS).format(topic))]
    if rng.random() < 0.3:
      turns += [dialogue.Turn(dialogue.CRITIQUE_REQUEST, "Is the response harmful? (A) or (B)?"),
                dialogue.Turn(dialogue.CRITIQUE, rng.choice(_CRITIQUES).format(topic)),
                dialogue.Turn(dialogue.REVISION_REQUEST, "Please rewrite the response."),
                dialogue.Turn(dialogue.REVISION, rng.choice(_REVISIONS).format(topic))]
    out.append(turns)
  return out


@pytest.fixture(scope="session")
def dialogues() -> list[list[dialogue.Turn]]:
  """1200 generated conversations (fixed seed)."""
  return make_dialogues(1200)


@pytest.fixture(scope="session")
def dialogue_texts(dialogues) -> list[str]:
  """``dialogues`` rendered as text, about 220 KB."""
  return [dialogue.render(turns) for turns in dialogues]


@pytest.fixture(scope="session")
def tiny_tokenizer(tmp_path_factory, dialogue_texts) -> Tokenizer:
  """A BPE tokenizer with 512 pieces trained on ``dialogue_texts``."""
  prefix = tmp_path_factory.mktemp("tiny_tokenizer") / "tok"
  return train_tokenizer(dialogue_texts, model_prefix=str(prefix), vocab_size=512)
