"""``cai_jax.losses.classifier`` against numbers worked by hand (math module only)."""
import math

import numpy as np
import pytest

from cai_jax.losses.classifier import (classifier_loss, classifier_metrics, final_scores,
                                       running_max_scores)


def _sig(x):
  return 1.0 / (1.0 + math.exp(-x))


# row 0: harmful, scored at positions 1 and 2; row 1: harmless, scored at position 2 only
VALUES = np.array([[0.0, 2.0, -1.0], [5.0, -3.0, 1.0]], np.float32)
MASK = np.array([[0, 1, 1], [0, 0, 1]], np.int32)
LABELS = np.array([1.0, 0.0], np.float32)


def test_per_token_loss_is_the_mean_of_row_means():
  row0 = (-math.log(_sig(2.0)) - math.log(_sig(-1.0))) / 2      # y = 1 at both positions
  row1 = -math.log(1 - _sig(1.0))                                # y = 0 at position 2
  got = float(classifier_loss(VALUES, MASK, LABELS))
  assert got == pytest.approx((row0 + row1) / 2, rel=1e-5)


def test_running_maximum_term():
  # row 0: running max of (sig 2, sig -1) = (sig 2, sig 2); row 1: only position 2
  np.testing.assert_allclose(np.asarray(running_max_scores(VALUES, MASK)),
                             [[0.0, _sig(2.0), _sig(2.0)], [0.0, 0.0, _sig(1.0)]], rtol=1e-6)
  running = (-math.log(_sig(2.0)) + -math.log(1 - _sig(1.0))) / 2
  per_token = float(classifier_loss(VALUES, MASK, LABELS))
  got = float(classifier_loss(VALUES, MASK, LABELS, cummax_weight=0.25))
  assert got == pytest.approx(0.75 * per_token + 0.25 * running, rel=1e-5)
  assert float(classifier_loss(VALUES, MASK, LABELS, cummax_weight=1.0)) == pytest.approx(
      running, rel=1e-5)


def test_final_scores_and_metrics():
  np.testing.assert_allclose(np.asarray(final_scores(VALUES, MASK)),
                             [_sig(-1.0), _sig(1.0)], rtol=1e-6)
  m = {k: float(v) for k, v in classifier_metrics(VALUES, MASK, LABELS).items()}
  # final: row 0 sig(-1) < 0.5 -> "harmless" (wrong), row 1 sig(1) >= 0.5 (wrong)
  assert m["accuracy"] == 0.0
  # streaming (running max): row 0 flagged at position 1 (right), row 1 flagged (wrong)
  assert m["streaming_accuracy"] == 0.5 and m["recall"] == 1.0
  assert m["false_flag_rate"] == 1.0
  # a position outside the mask never counts: row 1's 5.0 at position 0 is unscored
  m = classifier_metrics(VALUES, MASK, LABELS, threshold=0.9)
  assert float(m["recall"]) == 0.0 and float(m["false_flag_rate"]) == 0.0
