"""Collective constitutions from Polis exports: reading, opinion groups, group-aware
consensus, the written constitution and its provenance, the command line.

Every reference number here is computed in the test from the planted vote matrix (or by
hand), never through the module's helpers.
"""
import csv
import hashlib
import itertools
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from cai_jax.constitution import load_constitution
from cai_jax.constitution import collective as col
from cai_jax.constitution.load import REPO_ROOT

GROUP_SIZES = (60, 45, 30)  # planted opinion groups A, B and the minority C
# Planted stances (+1 agree, -1 disagree) of groups A, B, C.
DIVISIVE = [(+1, -1, -1), (-1, +1, -1), (-1, -1, +1), (+1, +1, -1), (+1, -1, +1),
            (-1, +1, +1), (+1, -1, -1), (-1, +1, -1)] * 2
N_DIV = len(DIVISIVE)  # ids 1..16; the consensus statements are columns 16..18
N_KEPT = N_DIV + 4  # statements not moderated out (the last, id 40, is)
CONSENSUS = ["The AI should not be racist.", "The AI should tell the truth.",
             "The AI should respect people's privacy."]
POPULAR = "The AI should always obey its owner."  # A and B agree, C rejects it


def _statements():
  """(id, text, stances): ids 1..16 divisive, 20..22 consensus, 30 popular, 40 moderated."""
  rows = [(str(i + 1), f"Divisive statement number {i + 1}.", s)
          for i, s in enumerate(DIVISIVE)]
  rows += [(str(20 + i), text, (+1, +1, +1)) for i, text in enumerate(CONSENSUS)]
  rows += [("30", POPULAR, (+1, +1, -1)), ("40", "Spam spam spam.", (+1, +1, +1))]
  return rows


def _planted(seed=0, sparse=5):
  """(votes with nan for unseen, planted labels, -1 for the sparse voters at the end).

  Votes follow the group's stance with some flips, passes and unseen cells; a participant
  whose noisy votes are not clearly closest to its own group's stances (by 3 votes) is
  drawn again, so the planted labels are the unambiguous truth.
  """
  rng = np.random.default_rng(seed)
  stances = np.array([s for _, _, s in _statements()], dtype=float).T  # groups x statements
  labels = np.repeat(np.arange(3), GROUP_SIZES)
  rows = []
  for g in labels:
    while True:
      row = stances[g].copy()
      flip = rng.random(row.shape) < 0.06
      row[flip] = -row[flip]
      row[rng.random(row.shape) < 0.04] = 0.0  # a few passes
      row[rng.random(row.shape) < 0.15] = np.nan  # not seen
      seen = ~np.isnan(row)
      miss = [(row[seen] != stances[h][seen]).sum() for h in range(3)]
      if all(miss[g] + 3 <= miss[h] for h in range(3) if h != g):
        rows.append(row)
        break
  # Sparse voters: 3 votes each, left out of clustering (min_votes 7).
  extra = np.full((sparse, stances.shape[1]), np.nan)
  extra[:, [N_DIV, N_DIV + 1, N_DIV + 2]] = 1.0
  return np.vstack(rows + [extra]), np.concatenate([labels, np.full(sparse, -1)])


def _write_export(folder, votes, statements=None):
  statements = statements or _statements()
  comments = os.path.join(folder, "comments.csv")
  with open(comments, "w", newline="", encoding="utf-8") as f:
    w = csv.writer(f)
    w.writerow(["timestamp", "datetime", "comment-id", "author-id", "agrees", "disagrees",
                "moderated", "comment-body"])
    for cid, text, _ in statements:
      w.writerow(["0", "x", cid, "1", "0", "0", "-1" if cid == "40" else "1", text])
  path = os.path.join(folder, "participants-votes.csv")
  with open(path, "w", newline="", encoding="utf-8") as f:
    w = csv.writer(f)
    w.writerow(list(col.VOTE_META) + [cid for cid, _, _ in statements])
    for i, row in enumerate(votes):
      cells = ["" if np.isnan(v) else str(int(v)) for v in row]
      w.writerow([f"p{i}", "0", "0", "0", "0", "0"] + cells)
  return comments, path


def _matched_accuracy(found, planted):
  keep = planted >= 0
  best = 0.0
  for perm in itertools.permutations(range(3)):
    mapped = np.array([perm[x] if x >= 0 else -2 for x in found[keep]])
    best = max(best, float((mapped == planted[keep]).mean()))
  return best


@pytest.fixture(name="export")
def _export(tmp_path):
  votes, labels = _planted()
  comments, path = _write_export(str(tmp_path), votes)
  return votes, labels, comments, path, str(tmp_path / "collective.json")


def test_reads_the_export_and_skips_moderated(export):
  votes, _, comments, path, _ = export
  poll = col.read_poll(comments, path)
  assert "40" not in poll.statement_ids and len(poll.statement_ids) == N_KEPT
  assert poll.statement_ids[:2] == ("1", "2") and poll.texts[N_DIV] == CONSENSUS[0]
  np.testing.assert_array_equal(poll.votes, votes[:, :N_KEPT])
  assert poll.participants[0] == "p0" and len(poll.participants) == len(votes)


def test_clustering_recovers_the_planted_groups(export):
  votes, labels, _, _, _ = export
  result = col.cluster(votes[:, :N_KEPT], seed=0)
  assert result.num_groups == 3
  assert (result.labels[labels == -1] == -1).all()  # sparse voters are not clustered
  assert _matched_accuracy(result.labels, labels) >= 0.95
  sizes = sorted(int((result.labels == g).sum()) for g in range(3))
  assert sizes == sorted(GROUP_SIZES)
  again = col.cluster(votes[:, :N_KEPT], seed=0)
  np.testing.assert_array_equal(again.labels, result.labels)


def test_given_number_of_groups_and_two_planted_groups():
  rng = np.random.default_rng(3)
  labels = np.repeat([0, 1], [40, 25])
  stance = np.where(rng.random((2, 10)) < 0.5, 1.0, -1.0)
  stance[1] = -stance[0]
  votes = stance[labels] * np.where(rng.random((65, 10)) < 0.05, -1, 1)
  auto = col.cluster(votes, seed=1)
  assert auto.num_groups == 2
  assert sorted(np.bincount(auto.labels)) == [25, 40]
  assert col.cluster(votes, num_groups=4, seed=1).num_groups == 4


def test_consensus_statements_are_exactly_the_ones_selected(export):
  votes, labels, comments, path, out = export
  poll, _, scores = col.collective_constitution(comments, path, out)
  selected = {poll.statement_ids[s.index] for s in scores if s.selected}
  assert selected == {"20", "21", "22"}
  popular = scores[poll.statement_ids.index("30")]
  # Popular on average (references computed here from the planted matrix) and above the
  # threshold in the two large groups, but rejected by the minority group (group 2).
  v = votes[:, N_KEPT - 1]
  average = ((v == 1).sum() + 1) / ((~np.isnan(v)).sum() + 2)
  assert average > 0.7 and popular.average == pytest.approx(average)
  minority = v[labels == 2]
  p_minority = ((minority == 1).sum() + 1) / ((~np.isnan(minority)).sum() + 2)
  assert p_minority < 0.2 and popular.consensus == pytest.approx(p_minority)
  assert min(popular.p_agree[:2]) > 0.8 and not popular.selected


def test_written_file_loads_and_provenance_matches_the_votes(export):
  votes, labels, comments, path, out = export
  _, clustering, _ = col.collective_constitution(comments, path, out)
  assert _matched_accuracy(clustering.labels, labels) == 1.0  # so counts match exactly
  c = load_constitution(out)
  assert [p.id for p in c.critique_principles] == [p.id for p in c.comparison_principles]
  assert {p.id for p in c.critique_principles} == {"polis-20", "polis-21", "polis-22"}
  for p in c.critique_principles:
    text = CONSENSUS[int(p.id.split("-")[1]) - 20]
    assert text in p.critique_request and text in p.revision_request
  with open(out, "rb") as f:
    sha = hashlib.sha256(f.read()).hexdigest()
  with open(out[:-5] + ".provenance.json", encoding="utf-8") as f:
    prov = json.load(f)
  assert prov["constitution_sha256"] == sha
  assert [g["size"] for g in prov["groups"]] == sorted(GROUP_SIZES, reverse=True)
  assert prov["clustered_participants"] == sum(GROUP_SIZES)
  # Groups are numbered largest first, so group g is planted group g (sizes 60, 45, 30).
  for row in prov["selected"]:
    j = int(row["statement_id"]) - 20 + N_DIV  # the statement's column
    assert row["text"] == CONSENSUS[j - N_DIV]
    assert row["principle_id"] == "polis-" + row["statement_id"]
    for g, group in enumerate(row["groups"]):
      v = votes[labels == g, j]
      assert (group["agree"], group["disagree"], group["pass"]) == (
          int((v == 1).sum()), int((v == -1).sum()), int((v == 0).sum()))
      seen = int((~np.isnan(v)).sum())
      assert group["p_agree"] == pytest.approx(((v == 1).sum() + 1) / (seen + 2))
    assert row["consensus"] == pytest.approx(min(g["p_agree"] for g in row["groups"]))
  ranked = [r["consensus"] for r in prov["selected"]]
  assert ranked == sorted(ranked, reverse=True)
  assert c.critique_principles[0].id == prov["selected"][0]["principle_id"]


def test_hand_checked_counts_and_min_not_product(tmp_path):
  """A tiny poll counted by hand: two groups of 4. Statement 1 is agreed 4/4 by group 0
  (p = 5/6) and 3/4 by group 1 (p = 4/6): the minimum 0.667 passes 0.6, the product 0.556
  would not. Statement 2 is agreed by group 0 only; statement 3 has a pass and an unseen
  cell."""
  a, b = [1, 1, 1, -1, 1], [1, -1, -1, -1, -1]
  rows = [a, a, a, [1, 1, 1, 1, 1], b, b, b, [-1, -1, -1, 1, -1]]
  votes = np.array(rows, dtype=float)
  votes[0, 2] = 0.0
  votes[1, 2] = np.nan
  stmts = [(str(i + 1), f"Statement {i + 1}.", None) for i in range(5)]
  comments, path = _write_export(str(tmp_path), votes, stmts)
  out = str(tmp_path / "c.json")
  poll, clustering, scores = col.collective_constitution(
      comments, path, out, num_groups=2, min_votes=4, min_group_votes=3)
  assert sorted(np.bincount(clustering.labels)) == [4, 4]
  g0 = clustering.labels[0]  # the group of participants 0..3
  s1 = scores[0]
  # Statement 1: rows 0-3 all agree; rows 4,5,6 agree, row 7 disagrees.
  assert (s1.agree[g0], s1.disagree[g0], s1.passed[g0]) == (4, 0, 0)
  assert (s1.agree[1 - g0], s1.disagree[1 - g0], s1.passed[1 - g0]) == (3, 1, 0)
  assert s1.p_agree[1 - g0] == pytest.approx(4 / 6) and s1.consensus == pytest.approx(4 / 6)
  assert s1.product == pytest.approx(5 / 6 * 4 / 6) and s1.selected
  s3 = scores[2]  # rows 0: pass, 1: unseen, 2,3: agree; rows 4-7: disagree
  assert (s3.agree[g0], s3.disagree[g0], s3.passed[g0]) == (2, 0, 1)
  assert s3.p_agree[g0] == pytest.approx(3 / 5) and not s3.selected
  assert [s.selected for s in scores] == [True, False, False, False, False]
  assert poll.statement_ids == ("1", "2", "3", "4", "5")


@pytest.mark.parametrize("which,bad,message", [
    ("votes", lambda rows: rows[6].__setitem__(8, "x"),
     "participants-votes.csv line 7: vote 'x' for comment 3 is not one of 1, -1, 0 or empty"),
    ("votes", lambda rows: rows[3].pop(),
     "participants-votes.csv line 4: 26 fields, the header has 27"),
    ("votes", lambda rows: rows[5].__setitem__(0, "p1"),
     "participants-votes.csv line 6: participant p1 given more than once (first on line 3)"),
    ("votes", lambda rows: rows[0].__setitem__(0, "who"),
     "participants-votes.csv line 1: missing column(s) participant"),
    ("votes", lambda rows: rows[0].__setitem__(6, "99"),
     "participants-votes.csv line 1: column(s) 99 are neither metadata"),
    ("comments", lambda rows: rows[4].__setitem__(6, "2"),
     "comments.csv line 5: moderated '2' for comment 4"),
    ("comments", lambda rows: rows[2].__setitem__(7, " "),
     "comments.csv line 3: comment 2 has an empty comment-body"),
    ("comments", lambda rows: rows[0].__setitem__(7, "body"),
     "comments.csv line 1: missing column(s) comment-body"),
])
def test_bad_input_names_file_line_and_field(export, which, bad, message):
  _, _, comments, path, out = export
  target = path if which == "votes" else comments
  with open(target, newline="", encoding="utf-8") as f:
    rows = list(csv.reader(f))
  bad(rows)
  with open(target, "w", newline="", encoding="utf-8") as f:
    csv.writer(f).writerows(rows)
  with pytest.raises(col.PolisError) as e:
    col.collective_constitution(comments, path, out)
  assert message in str(e.value)
  assert not os.path.exists(out)


def test_multiline_comment_body_keeps_line_numbers(tmp_path):
  comments = tmp_path / "comments.csv"
  comments.write_text('comment-id,comment-body\n1,"one\nline two"\n2,two\n2,again\n',
                      encoding="utf-8")
  with pytest.raises(col.PolisError, match="comments.csv line 5: comment-id 2 given more"):
    col.read_comments(str(comments))


def test_no_consensus_is_an_error(export):
  _, _, comments, path, out = export
  with pytest.raises(col.PolisError, match="no statement reaches consensus 0.99"):
    col.collective_constitution(comments, path, out, threshold=0.99)


def test_command_line_end_to_end(export):
  _, _, comments, path, out = export
  proc = subprocess.run(
      [sys.executable, "-m", "cai_jax.constitution.collective", f"--comments={comments}",
       f"--votes={path}", f"--out={out}", "--threshold=0.6"],
      cwd=REPO_ROOT, capture_output=True, text=True, timeout=60,
      env={**os.environ, "JAX_PLATFORMS": "cpu"})
  assert proc.returncode == 0, proc.stderr
  assert "3 opinion groups" in proc.stdout and "group 2: 30 participants" in proc.stdout
  assert f"3 of {N_KEPT} statements selected" in proc.stdout
  for text in CONSENSUS:
    assert text[:40] in proc.stdout
  assert load_constitution(out).name == "collective"
  bad = subprocess.run(
      [sys.executable, "-m", "cai_jax.constitution.collective", f"--comments={comments}",
       f"--votes={comments}", f"--out={out}"],
      cwd=REPO_ROOT, capture_output=True, text=True, timeout=60)
  assert bad.returncode == 2
  assert "comments.csv line 1: missing column(s) participant" in bad.stderr
