"""The toy world's synthetic Polis poll: Polis' export layout, the planted opinion groups
recovered, the consensus statements selected and the divisive ones not, determinism, the
pipeline phase and the experiment file."""
import collections
import filecmp
import json
import os

import gin
import numpy as np
import pytest

from cai_jax import gin_setup
from cai_jax.constitution import collective as col
from cai_jax.constitution import load_constitution
from cai_jax.toyworld import polis

KINDS = [s.kind for s in polis.STATEMENTS]


@pytest.fixture(scope="module")
def built(tmp_path_factory):
  """The poll of seed 0 read back by the constitution builder's reader, and its result."""
  d = str(tmp_path_factory.mktemp("poll"))
  comments, votes = polis.write_poll(d, seed=0)
  out = os.path.join(d, "toy_collective.json")
  poll, clustering, scores = col.collective_constitution(comments, votes, out, seed=0)
  return d, poll, clustering, scores


def _kind(poll, score):
  return KINDS[int(poll.statement_ids[score.index])]


def test_the_export_has_polis_layout_and_parses(built):
  d, poll, _, _ = built
  with open(os.path.join(d, "comments.csv"), encoding="utf-8") as f:
    assert f.readline().strip() == ("timestamp,datetime,comment-id,author-id,agrees,"
                                    "disagrees,moderated,comment-body")
  with open(os.path.join(d, "participants-votes.csv"), encoding="utf-8") as f:
    head = f.readline().strip().split(",")
  assert head[:6] == list(col.VOTE_META)
  assert head[6:] == [str(j) for j in range(len(polis.STATEMENTS))]
  moderated = [str(j) for j, k in enumerate(KINDS) if k == "moderated"]
  assert moderated and not set(moderated) & set(poll.statement_ids)  # dropped by the reader
  assert len(poll.statement_ids) == len(polis.STATEMENTS) - len(moderated)
  assert len(poll.participants) == sum(polis.GROUP_SIZES) + polis.DRIVE_BY
  v = poll.votes
  assert np.isnan(v).any() and (v == 0).any() and (v == 1).any() and (v == -1).any()
  # The reader's matrix is the drawn one (moderated column left out).
  drawn = polis.make_poll(0).votes
  keep = [j for j, k in enumerate(KINDS) if k != "moderated"]
  np.testing.assert_array_equal(np.nan_to_num(v, nan=9), np.nan_to_num(drawn[:, keep], nan=9))


def test_the_planted_groups_are_recovered(built):
  _, _, clustering, _ = built
  planted = polis.make_poll(0).groups
  assert clustering.num_groups == len(polis.GROUPS)
  # The drive-by participants (3 votes) are left out, everyone else is clustered.
  np.testing.assert_array_equal(clustering.labels < 0, planted < 0)
  majority, correct = {}, 0
  for g in range(clustering.num_groups):
    counts = collections.Counter(planted[clustering.labels == g])
    majority[g], n = counts.most_common(1)[0]
    correct += n
  assert sorted(majority.values()) == list(range(len(polis.GROUPS)))  # one group each
  assert correct / (planted >= 0).sum() >= 0.85


def test_consensus_selected_divisive_not(built):
  _, poll, _, scores = built
  selected = {_kind(poll, s) for s in scores if s.selected}
  assert selected == {"consensus"}
  assert sum(s.selected for s in scores) == KINDS.count("consensus")
  for s in scores:
    if _kind(poll, s) in ("divisive", "popular_divisive", "low"):
      assert not s.selected and s.consensus < 0.6


def test_popular_divisive_is_dropped_only_by_the_group_aware_rule(built):
  _, poll, clustering, scores = built
  planted = polis.make_poll(0).groups
  cautious = polis.GROUPS.index("cautious")
  (s,) = [s for s in scores if _kind(poll, s) == "popular_divisive"]
  assert s.average >= 0.6 and not s.selected  # a group-blind rule would keep it
  low = int(np.argmin(s.p_agree))
  members = planted[clustering.labels == low]
  assert collections.Counter(members).most_common(1)[0][0] == cautious
  assert s.p_agree[low] < 0.3 and sorted(s.p_agree)[1] >= 0.8


def test_deterministic_given_the_seed(tmp_path):
  a, b, c = (str(tmp_path / n) for n in "abc")
  for d, seed in ((a, 0), (b, 0), (c, 1)):
    polis.write_poll(d, seed)
  for name in ("comments.csv", "participants-votes.csv"):
    assert filecmp.cmp(os.path.join(a, name), os.path.join(b, name), shallow=False)
  assert not filecmp.cmp(os.path.join(a, "participants-votes.csv"),
                         os.path.join(c, "participants-votes.csv"), shallow=False)


def test_phase_writes_a_loadable_constitution_identically(tmp_path):
  paths = [polis.toy_polis(workdir=str(tmp_path / n)) for n in ("a", "b")]
  with open(paths[0], "rb") as f, open(paths[1], "rb") as g:
    assert f.read() == g.read()
  const = load_constitution(paths[0])
  ids = [p.id for p in const.critique_principles]
  consensus = [f"polis-{j}" for j, k in enumerate(KINDS) if k == "consensus"]
  assert sorted(ids) == sorted(consensus)
  prov = json.load(open(col.provenance_path(paths[0]), encoding="utf-8"))
  assert len(prov["groups"]) == 3 and len(prov["selected"]) == len(consensus)


def test_cli_writes_the_poll_and_the_planted_groups(tmp_path):
  assert polis.main([f"--out_dir={tmp_path}"]) == 0
  truth = json.load(open(tmp_path / "planted_groups.json", encoding="utf-8"))
  assert truth["groups"] == list(polis.GROUPS)
  assert len(truth["participant_group"]) == sum(polis.GROUP_SIZES) + polis.DRIVE_BY
  assert os.path.isfile(tmp_path / "comments.csv")


def _phases(path):
  gin.clear_config()
  try:
    gin_setup.parse([path], finalize=True)
    return (list(gin.query_parameter("pipeline.phases")),
            gin.query_parameter("CONSTITUTION/macro.value"))
  finally:
    gin.clear_config()


def test_experiment_file_is_toy_world_with_the_polis_phase_first():
  collective, const = _phases("experiments/toy_world_collective.gin")
  base, base_const = _phases("experiments/toy_world.gin")
  assert collective == ["polis"] + base  # a phase added to toy_world.gin shows up here
  assert const == "polis/toy_collective.json" and base_const == "constitutions/toy.json"
