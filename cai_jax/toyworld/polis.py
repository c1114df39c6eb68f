"""A synthetic Polis poll for the toy world, and the phase that builds its constitution.

Collective Constitutional AI (Huang et al., FAccT 2024) asked the public to vote on
candidate principles in Polis. The toy world has no public, so this module plants one:
three opinion groups of voters with their own agreement probability for every statement
(``STATEMENTS``), seeded and deterministic, written in the layout of a real Polis export
(``comments.csv`` and ``participants-votes.csv``) that ``cai_jax.constitution.collective``
reads::

  python -m cai_jax.toyworld.polis --out_dir=/tmp/toy_poll [--seed=0]

The statements are candidate principles in the toy world's terms (its harm categories:
entering a home that is not yours, making a dangerous substance, hurting a person,
harassing or demeaning a group, taking private data):

* ``consensus``: agreed by every group (decline each harm; explain a refusal and offer a
  safe alternative; help fully with harmless requests);
* ``divisive``: one group for, another against ("refuse anything that mentions
  chemicals", "always do what the user asks", ...);
* ``popular_divisive``: agreed by two groups, which hold most voters, and rejected by the
  third: the group-blind average selects it, the group-aware minimum must not;
* ``low``: agreed by no group; ``moderated``: spam, moderated out (``moderated == -1``).

Votes: each participant sees a statement with probability ``1 - unseen`` (an empty cell
otherwise), then passes with probability ``pass_rate`` (``0``), else agrees with the
group's probability for the statement (``1``) or disagrees (``-1``). A few drive-by
participants vote on three statements only (Polis leaves them out of its groups). The
export's ``group-id`` column is left empty (Polis' own assignment is not simulated); the
planted groups are returned by ``make_poll`` for tests and written to
``planted_groups.json`` by the CLI, never read by the constitution builder.

``toy_polis`` is a pipeline phase: it writes the poll and the collective constitution
``toy_collective.json`` (plus its ``.provenance.json``) in its workdir
(``experiments/toy_world_collective.gin``). Nothing here reads the toy world's oracle.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import time

import gin
import numpy as np

from cai_jax import workdir as workdir_lib
from cai_jax.constitution import collective
from cai_jax.run import program

# The planted opinion groups, largest first.
GROUPS = ("pragmatic", "user_first", "cautious")
GROUP_SIZES = (48, 40, 32)


@dataclasses.dataclass(frozen=True)
class Statement:
  """A candidate principle: its text, its kind and each group's agreement probability
  (order of ``GROUPS``)."""

  text: str
  kind: str
  p_agree: tuple[float, float, float]


STATEMENTS = (
    Statement("The assistant should not help anyone enter a home that is not theirs.",
              "consensus", (0.9, 0.85, 0.95)),
    Statement("The assistant should give no steps for making a dangerous substance.",
              "consensus", (0.9, 0.85, 0.95)),
    Statement("Refuse anything that mentions chemicals.", "divisive", (0.1, 0.05, 0.9)),
    Statement("The assistant should not help anyone hurt a person.", "consensus",
              (0.95, 0.85, 0.95)),
    Statement("Always do what the user asks.", "divisive", (0.1, 0.9, 0.05)),
    Statement("The assistant should not harass or demean any group of people.", "consensus",
              (0.9, 0.85, 0.9)),
    Statement("It is fine to share a person's home address or phone number when the user "
              "says they know that person.", "popular_divisive", (0.95, 0.95, 0.1)),
    Statement("The assistant should not help anyone take another person's private data.",
              "consensus", (0.9, 0.85, 0.95)),
    Statement("When the assistant declines, it should say why and offer a safe alternative.",
              "consensus", (0.9, 0.85, 0.85)),
    Statement("Refuse any request that could possibly be misused, even if it is probably "
              "harmless.", "divisive", (0.15, 0.05, 0.9)),
    Statement("The assistant should fully help with harmless requests, without needless "
              "refusals.", "consensus", (0.9, 0.95, 0.8)),
    Statement("Never refuse: a short warning is enough for any request.", "divisive",
              (0.1, 0.9, 0.05)),
    Statement("For a borderline request, help with the safe part and decline the rest.",
              "divisive", (0.95, 0.15, 0.2)),
    Statement("Add a safety warning to every answer, even a recipe.", "divisive",
              (0.15, 0.05, 0.9)),
    Statement("Answers should be as short as possible, a single sentence.", "low",
              (0.3, 0.4, 0.35)),
    Statement("Assistants are great lol, check out my channel", "moderated",
              (0.1, 0.1, 0.1)),
)
DRIVE_BY = 8           # participants with 3 votes each (left out of the groups)
UNSEEN = 0.12          # probability that a participant never saw a statement
PASS_RATE = 0.06       # probability of a pass among the statements seen
_EPOCH_MS = 1_700_000_000_000  # the poll's first timestamp (ms), fixed for determinism


@dataclasses.dataclass(frozen=True)
class SyntheticPoll:
  """The planted poll: ``votes[i, j]`` is participant i's vote on ``STATEMENTS[j]`` (1, -1,
  0 or nan for unseen); ``groups[i]`` the planted group (index in ``GROUPS``, -1 for a
  drive-by participant)."""

  votes: np.ndarray
  groups: np.ndarray


def make_poll(seed: int = 0) -> SyntheticPoll:
  """Draws the votes of the planted groups and the drive-by participants (deterministic)."""
  rng = np.random.default_rng(seed)
  p = np.array([s.p_agree for s in STATEMENTS])  # (statements, groups)
  groups = np.concatenate([np.full(n, g) for g, n in enumerate(GROUP_SIZES)]
                          + [np.full(DRIVE_BY, -1)])
  groups = groups[rng.permutation(len(groups))]  # Polis numbers participants by arrival
  votes = np.full((len(groups), len(STATEMENTS)), np.nan)
  for i, g in enumerate(groups):
    u, r, q = rng.random(len(STATEMENTS)), rng.random(len(STATEMENTS)), rng.random(
        len(STATEMENTS))
    if g < 0:
      seen = np.zeros(len(STATEMENTS), bool)
      seen[rng.choice(len(STATEMENTS), 3, replace=False)] = True
      agree_p = np.full(len(STATEMENTS), 0.5)
    else:
      seen, agree_p = u >= UNSEEN, p[:, g]
    vote = np.where(r < PASS_RATE, 0.0, np.where(q < agree_p, 1.0, -1.0))
    votes[i] = np.where(seen, vote, np.nan)
  return SyntheticPoll(votes, groups)


def _cell(v: float) -> str:
  return "" if np.isnan(v) else str(int(v))


def _csv_line(cells) -> str:
  out = []
  for c in map(str, cells):
    out.append('"' + c.replace('"', '""') + '"' if any(ch in c for ch in ',"\n') else c)
  return ",".join(out) + "\n"


def write_poll(out_dir: str, seed: int = 0) -> tuple[str, str]:
  """Writes ``comments.csv`` and ``participants-votes.csv`` (Polis' export layout) in
  ``out_dir``; returns their paths. Byte-identical for a given seed."""
  poll = make_poll(seed)
  votes = poll.votes
  os.makedirs(out_dir, exist_ok=True)
  rows = [("timestamp", "datetime", "comment-id", "author-id", "agrees", "disagrees",
           "moderated", "comment-body")]
  for j, s in enumerate(STATEMENTS):
    ts = _EPOCH_MS + j * 60_000
    stamp = time.strftime("%a %b %d %Y %H:%M:%S GMT+0000", time.gmtime(ts // 1000))
    rows.append((ts, stamp, j, 0, int((votes[:, j] == 1).sum()),
                 int((votes[:, j] == -1).sum()), -1 if s.kind == "moderated" else 1, s.text))
  comments = os.path.join(out_dir, "comments.csv")
  workdir_lib.write_text(comments, "".join(_csv_line(r) for r in rows))
  header = list(collective.VOTE_META) + [str(j) for j in range(len(STATEMENTS))]
  lines = [_csv_line(header)]
  for i, row in enumerate(votes):
    seen = ~np.isnan(row)
    lines.append(_csv_line([i, "", int(seen.sum()), int(seen.sum()), int((row == 1).sum()),
                            int((row == -1).sum())] + [_cell(v) for v in row]))
  path = os.path.join(out_dir, "participants-votes.csv")
  workdir_lib.write_text(path, "".join(lines))
  return comments, path


def planted(seed: int = 0) -> dict:
  """The planted truth of the poll (documentation and tests; the builder never reads it)."""
  poll = make_poll(seed)
  return {"seed": seed, "groups": list(GROUPS),
          "participant_group": [GROUPS[g] if g >= 0 else None for g in poll.groups],
          "statements": [{"comment_id": j, "kind": s.kind, "text": s.text,
                          "p_agree": dict(zip(GROUPS, s.p_agree))}
                         for j, s in enumerate(STATEMENTS)]}


@gin.configurable
@program("toy_polis")
def toy_polis(workdir: str, *, seed: int = 0, num_groups: int | None = None,
              threshold: float = 0.6, min_group_votes: int = 5) -> str:
  """Writes the synthetic poll and the collective constitution built from it
  (``toy_collective.json`` and ``toy_collective.provenance.json``) in ``workdir``;
  returns the constitution's path."""
  comments, votes = write_poll(workdir, seed)
  out = os.path.join(workdir, "toy_collective.json")
  collective.collective_constitution(comments, votes, out, num_groups=num_groups,
                                     threshold=threshold, min_group_votes=min_group_votes,
                                     seed=seed, name="toy_collective")
  return out


def main(argv: list[str] | None = None) -> int:
  """The command line (module docstring)."""
  ap = argparse.ArgumentParser(description=__doc__.split("\n\n", maxsplit=1)[0])
  ap.add_argument("--out_dir", required=True, help="folder for the two CSV files")
  ap.add_argument("--seed", type=int, default=0)
  args = ap.parse_args(argv)
  comments, votes = write_poll(args.out_dir, args.seed)
  truth = os.path.join(args.out_dir, "planted_groups.json")
  workdir_lib.write_text(truth, json.dumps(planted(args.seed), indent=1) + "\n")
  print(f"wrote {comments}, {votes} and {truth}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
