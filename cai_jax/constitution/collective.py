"""Collective constitutions from a Polis poll (Huang et al., FAccT 2024, arXiv 2406.07814).

In Collective Constitutional AI the public wrote and voted on statements in Polis; those
with broad agreement across *opinion groups* became the constitution. Here likewise::

  python -m cai_jax.constitution.collective --comments=comments.csv \\
      --votes=participants-votes.csv --out=constitutions/collective.json

1. Read ``comments.csv`` (``comment-id``, ``comment-body``, others ignored; ``moderated
   == -1`` rows dropped) and ``participants-votes.csv`` (``participant``, optional
   ``group-id, n-comments, n-votes, n-agree, n-disagree``, one column per comment id: ``1``
   agree, ``-1`` disagree, ``0`` pass, empty unseen); errors say ``<file> line N: ...``.
2. Opinion groups as Polis forms them: participants with fewer than ``min_votes`` votes
   (passes count; default 7 like Polis, capped at the number of statements) are left out.
   Unseen cells get the statement's mean vote; the centred matrix is projected on its
   first 2 principal components, each row scaled by ``sqrt(statements / votes cast)``
   (Polis' correction for sparse voters). k-means (own numpy code; ``restarts`` k-means++
   starts, the lowest inertia kept; deterministic given ``seed``) with k from 2..5 by
   silhouette score unless ``num_groups`` is given. Groups are numbered largest first.
3. Group-aware consensus: ``p(g, s) = (agree + 1) / (seen + 2)`` over group g's votes on
   statement s (``seen`` includes passes: a pass is not agreement). The consensus is the
   **minimum** over groups, not Polis' product (reported too): the minimum means the same
   for any number of groups (``>= 0.6``: *every* group agrees with probability >= 0.6).
   Selected: consensus >= ``threshold`` (default 0.6) and >= ``min_group_votes``
   (default 5) votes from every group; ranked by consensus. The group-blind agreement over
   all voters is reported too: a statement popular on average but rejected by one group
   is not selected.
4. Statement ``S`` with id ``N`` becomes critique and comparison principle ``polis-N``
   (templates ``CRITIQUE``, ``REVISION``, ``COMPARISON``), checked by
   ``parse_constitution`` and written atomically. The schema has no room for provenance:
   ``<out minus .json>.provenance.json`` holds each statement's id, text, per-group agree
   / disagree / pass counts and consensus, the parameters, and the sha256 of ``out``.

Not implemented: Polis' "representative comments", incremental clustering, and the
paper's manual merging / rewording of statements (edit the written file for that).
"""
from __future__ import annotations

import argparse
import csv
import dataclasses
import hashlib
import json
import math
import os
import re
import sys
import textwrap

import numpy as np

from cai_jax import workdir
from cai_jax.constitution.load import parse_constitution

CRITIQUE = ('Identify every way in which the assistant\'s last response goes against this '
            'principle: "{s}"')
REVISION = 'Rewrite the assistant\'s response so that it follows this principle: "{s}"'
COMPARISON = 'Which of these assistant responses better follows the principle "{s}"?'
VOTE_META = ("participant", "group-id", "n-comments", "n-votes", "n-agree", "n-disagree")
_VOTES = {"1": 1.0, "-1": -1.0, "0": 0.0, "": np.nan}


class PolisError(ValueError):
  """A Polis export that cannot be read (the message names file, line and field)."""


@dataclasses.dataclass(frozen=True)
class Poll:
  """Statements (moderated-out ones dropped) and votes: ``votes[i, j]`` is participant i's
  vote on statement j, 1, -1, 0 or nan (not seen)."""

  statement_ids: tuple[str, ...]
  texts: tuple[str, ...]
  participants: tuple[str, ...]
  votes: np.ndarray


@dataclasses.dataclass(frozen=True)
class Clustering:
  """Opinion groups: ``labels[i]`` is participant i's group, -1 if not clustered; the
  2-D ``points`` of the clustered participants."""

  labels: np.ndarray
  num_groups: int
  silhouette: float
  points: np.ndarray


@dataclasses.dataclass(frozen=True)
class Score:
  """One statement (column ``index``): per-group counts and ``p_agree``; ``consensus`` (min
  over groups), ``product`` (Polis'), ``average`` (all voters, groups ignored)."""

  index: int
  agree: tuple[int, ...]
  disagree: tuple[int, ...]
  passed: tuple[int, ...]
  p_agree: tuple[float, ...]
  consensus: float
  product: float
  average: float
  selected: bool


def _csv_rows(path: str, name: str):
  """Yields (line where the row starts, stripped cells) of a CSV file, the header first."""
  start = 1
  try:
    with open(path, newline="", encoding="utf-8-sig") as f:
      reader = csv.reader(f)
      for row in reader:
        yield start, [cell.strip() for cell in row]
        start = reader.line_num + 1
  except OSError as e:
    raise PolisError(f"{path}: cannot read ({e.strerror})") from None
  except (csv.Error, UnicodeDecodeError) as e:
    raise PolisError(f"{name} line {start}: not valid CSV / utf-8 ({e})") from None


def _read_csv(path: str, required: tuple[str, ...]):
  """(file name, header, iterator of (line, cells) over the non-blank rows after it);
  raises on a bad header now, on a row with the wrong number of fields when reached."""
  name = os.path.basename(path)
  rows = _csv_rows(path, name)
  header = next(rows, (1, None))[1]
  if header is None:
    raise PolisError(f"{name} line 1: the file is empty (expected a header row)")
  missing = [c for c in required if c not in header]
  dups = sorted({c for c in header if header.count(c) > 1})
  if missing or dups:
    raise PolisError(f"{name} line 1: " + (f"missing column(s) {', '.join(missing)}; header "
                     f"is {','.join(header)}" if missing else
                     f"column(s) given more than once: {', '.join(dups)}"))

  def body():
    for line, row in rows:
      if any(row) and len(row) != len(header):
        raise PolisError(f"{name} line {line}: {len(row)} fields, the header has "
                         f"{len(header)}")
      if any(row):
        yield line, row
  return name, header, body()


def read_comments(path: str) -> tuple[dict[str, str], set[str]]:
  """From a Polis ``comments.csv``: (statement id -> text without the moderated-out rows,
  every comment id in the file)."""
  name, header, rows = _read_csv(path, ("comment-id", "comment-body"))
  col = {c: i for i, c in enumerate(header)}
  out: dict[str, str] = {}
  all_ids: set[str] = set()
  for line, row in rows:
    cid, body = row[col["comment-id"]], " ".join(row[col["comment-body"]].split())
    if not cid or cid in all_ids:
      raise PolisError(f"{name} line {line}: " + (f"comment-id {cid} given more than once"
                                                  if cid else "empty comment-id"))
    all_ids.add(cid)
    moderated = row[col["moderated"]] if "moderated" in col else ""
    if moderated not in ("", "-1", "0", "1"):
      raise PolisError(f"{name} line {line}: moderated {moderated!r} for comment {cid} "
                       "is not one of 1, 0, -1 or empty")
    if moderated == "-1":
      continue
    if not body:
      raise PolisError(f"{name} line {line}: comment {cid} has an empty comment-body")
    out[cid] = body
  if not out:
    raise PolisError(f"{name}: no statements (every row missing or moderated out)")
  return out, all_ids


def read_votes(path: str, comments: dict[str, str], known_ids: set[str]) -> Poll:
  """The vote matrix from a Polis ``participants-votes.csv`` for ``comments`` (id -> text);
  a vote column must be in ``known_ids`` (moderated-out ones are checked, then dropped)."""
  name, header, rows = _read_csv(path, ("participant",))
  vote_cols = [(i, c) for i, c in enumerate(header) if c not in VOTE_META]
  unknown = [c for _, c in vote_cols if c not in known_ids]
  if unknown:
    raise PolisError(f"{name} line 1: column(s) {', '.join(unknown)} are neither metadata "
                     f"({', '.join(VOTE_META)}) nor a comment-id of comments.csv")
  missing = [cid for cid in comments if cid not in {c for _, c in vote_cols}]
  if missing:
    raise PolisError(f"{name} line 1: no column for comment(s) {', '.join(missing)} "
                     "of comments.csv")
  order = {c: j for j, c in enumerate(comments)}
  p_col, participants, matrix, first_line = header.index("participant"), [], [], {}
  for line, row in rows:
    pid = row[p_col]
    if not pid or pid in first_line:
      raise PolisError(f"{name} line {line}: " + (
          f"participant {pid} given more than once (first on line {first_line[pid]})"
          if pid else "empty participant"))
    first_line[pid] = line
    values = np.full(len(comments), np.nan)
    for i, cid in vote_cols:
      if row[i] not in _VOTES:
        raise PolisError(f"{name} line {line}: vote {row[i]!r} for comment {cid} is not "
                         "one of 1, -1, 0 or empty")
      if cid in order:
        values[order[cid]] = _VOTES[row[i]]
    participants.append(pid)
    matrix.append(values)
  if not participants:
    raise PolisError(f"{name}: no participants")
  return Poll(tuple(comments), tuple(comments.values()), tuple(participants),
              np.array(matrix, dtype=np.float64).reshape(len(participants), len(comments)))


def read_poll(comments_path: str, votes_path: str) -> Poll:
  """Reads a Polis export; ``PolisError`` names the file, line and field of a problem."""
  comments, known_ids = read_comments(comments_path)
  return read_votes(votes_path, comments, known_ids)


def project(votes: np.ndarray) -> np.ndarray:
  """Polis' 2-D map: mean-imputed, centred votes on the first 2 principal components,
  each row scaled by ``sqrt(statements / votes cast)``; signs fixed for determinism."""
  seen = ~np.isnan(votes)
  counts = seen.sum(axis=0)
  means = np.where(counts > 0, np.nansum(votes, axis=0) / np.maximum(counts, 1), 0.0)
  filled = np.where(seen, votes, means)
  centred = filled - filled.mean(axis=0)
  _, _, vt = np.linalg.svd(centred, full_matrices=False)
  comps = vt[:2]
  comps = comps * np.where(comps[np.arange(len(comps)), np.abs(comps).argmax(1)] < 0,
                           -1.0, 1.0)[:, None]
  points = centred @ comps.T  # 1-D if there is a single statement
  scale = np.sqrt(votes.shape[1] / np.maximum(seen.sum(axis=1), 1))
  return points * scale[:, None]


def kmeans(points: np.ndarray, k: int, *, seed: int = 0, restarts: int = 10,
           iterations: int = 100) -> tuple[np.ndarray, float]:
  """k-means (Lloyd) from ``restarts`` k-means++ starts; (labels, inertia) of the best."""
  rng = np.random.default_rng(seed)
  n, best = len(points), (None, math.inf)
  for _ in range(restarts):
    centres = [points[rng.integers(n)]]
    for _ in range(1, k):
      d2 = np.min(((points[:, None] - np.array(centres)[None]) ** 2).sum(-1), axis=1)
      probs = d2 / d2.sum() if d2.sum() > 0 else np.full(n, 1.0 / n)
      centres.append(points[rng.choice(n, p=probs)])
    centres = np.array(centres)
    labels = np.full(n, -1)
    for _ in range(iterations):
      d2 = ((points[:, None] - centres[None]) ** 2).sum(-1)
      new = d2.argmin(1)
      for c in range(k):  # an empty cluster takes the point farthest from its centre
        if not (new == c).any():
          far = d2[np.arange(n), new].argmax()
          new[far] = c
          d2[far] = 0.0
      if (new == labels).all():
        break
      labels = new
      centres = np.array([points[labels == c].mean(0) for c in range(k)])
    inertia = float(((points - centres[labels]) ** 2).sum())
    if inertia < best[1] - 1e-12:
      best = (labels, inertia)
  return best[0], best[1]


def silhouette(points: np.ndarray, labels: np.ndarray) -> float:
  """Mean silhouette coefficient (Rousseeuw 1987); 0 for a point alone in its cluster."""
  d = np.sqrt(((points[:, None] - points[None]) ** 2).sum(-1))
  ks = np.unique(labels)
  if len(ks) < 2:
    return -1.0
  sums = np.stack([d[:, labels == c].sum(1) for c in ks], 1)
  sizes = np.array([(labels == c).sum() for c in ks], dtype=np.float64)
  own, rows = np.searchsorted(ks, labels), np.arange(len(points))
  a = sums[rows, own] / np.maximum(sizes[own] - 1, 1)
  other = sums / sizes
  other[rows, own] = np.inf  # b: mean distance to the nearest other cluster
  b = other.min(1)
  s = np.where(sizes[own] > 1, (b - a) / np.maximum(np.maximum(a, b), 1e-12), 0.0)
  return float(s.mean())


def cluster(votes: np.ndarray, *, min_votes: int | None = None, num_groups: int | None = None,
            seed: int = 0, restarts: int = 10, max_groups: int = 5) -> Clustering:
  """Opinion groups of the participants (module docstring, step 2)."""
  n, m = votes.shape
  min_votes = min(7, m) if min_votes is None else min_votes
  active = np.flatnonzero((~np.isnan(votes)).sum(1) >= min_votes)
  ks = [num_groups] if num_groups else list(range(2, max_groups + 1))
  if len(active) < max(ks) + 1:
    raise PolisError(f"only {len(active)} of {n} participants cast at least {min_votes} "
                     f"votes; too few to form {max(ks)} opinion groups")
  points = project(votes[active])
  # A subsample keeps the silhouette's n x n distances small on large polls.
  sub = np.random.default_rng(seed).permutation(len(points))[:2000]
  fits = [(kmeans(points, k, seed=seed, restarts=restarts)[0], k) for k in ks]
  scored = [(silhouette(points[sub], lab[sub]) if k > 1 else 0.0, k, lab) for lab, k in fits]
  score, k, labels = max(scored, key=lambda t: t[0])  # the smallest k among ties
  sizes = np.bincount(labels, minlength=k)
  order = sorted(range(k), key=lambda c: (-sizes[c], points[labels == c, 0].mean()))
  full = np.full(n, -1)
  full[active] = np.argsort(order)[labels]
  return Clustering(full, k, score, points)


def score_statements(votes: np.ndarray, labels: np.ndarray, num_groups: int, *,
                     threshold: float = 0.6, min_group_votes: int = 5) -> list[Score]:
  """Group-aware consensus of every statement (module docstring, step 3), in file order."""
  scores = []
  for j in range(votes.shape[1]):
    col = votes[:, j]
    agree, disagree, passed = (tuple(int((col[labels == g] == v).sum())
                                     for g in range(num_groups)) for v in (1, -1, 0))
    seen = [a + d + p for a, d, p in zip(agree, disagree, passed)]
    p_agree = tuple((a + 1) / (s + 2) for a, s in zip(agree, seen))
    average = (int((col == 1).sum()) + 1) / (int((~np.isnan(col)).sum()) + 2)
    selected = min(p_agree) >= threshold and min(seen) >= min_group_votes
    scores.append(Score(j, agree, disagree, passed, p_agree, min(p_agree),
                        float(np.prod(p_agree)), average, selected))
  return scores


def ranked(scores: list[Score]) -> list[Score]:
  """The selected statements, highest consensus first (file order among ties)."""
  return sorted((s for s in scores if s.selected), key=lambda s: -s.consensus)


def principle_id(statement_id: str) -> str:
  """``polis-<id>``, with characters the schema does not allow in ids replaced by ``-``."""
  return "polis-" + re.sub(r"[^A-Za-z0-9_.-]", "-", statement_id)


def build_constitution(poll: Poll, selected: list[Score], *, name: str,
                       num_groups: int) -> dict:
  """The constitution (schema version 1) from the selected statements, best first."""
  crit, comp = [], []
  for s in selected:
    pid, text = principle_id(poll.statement_ids[s.index]), poll.texts[s.index]
    crit.append({"id": pid, "critique_request": CRITIQUE.format(s=text),
                 "revision_request": REVISION.format(s=text)})
    comp.append({"id": pid, "text": COMPARISON.format(s=text)})
  description = (
      f"Collective constitution from a Polis poll: {len(selected)} of "
      f"{len(poll.statement_ids)} statements, selected by group-aware consensus across "
      f"{num_groups} opinion groups of {len(poll.participants)} participants "
      f"({int((~np.isnan(poll.votes)).sum())} votes); provenance in the .provenance.json "
      "file next to this one.")
  return {"version": 1, "name": name, "description": description,
          "critique_principles": crit, "comparison_principles": comp,
          "critique_exemplars": [], "comparison_exemplars": []}


def _provenance(poll: Poll, clustering: Clustering, scores: list[Score], params: dict,
                sha: str, out: str) -> dict:
  def row(s: Score) -> dict:
    return {"statement_id": poll.statement_ids[s.index],
            "principle_id": principle_id(poll.statement_ids[s.index]),
            "text": poll.texts[s.index], "consensus": s.consensus,
            "consensus_product": s.product, "average_agreement": s.average,
            "groups": [{"group": g, "agree": s.agree[g], "disagree": s.disagree[g],
                        "pass": s.passed[g], "p_agree": s.p_agree[g]}
                       for g in range(clustering.num_groups)]}
  return {"constitution": os.path.basename(out), "constitution_sha256": sha,
          "parameters": params, "participants": len(poll.participants),
          "clustered_participants": int((clustering.labels >= 0).sum()),
          "groups": [{"group": g, "size": int((clustering.labels == g).sum())}
                     for g in range(clustering.num_groups)],
          "silhouette": clustering.silhouette, "selected": [row(s) for s in ranked(scores)],
          "not_selected": [row(s) for s in scores if not s.selected]}


def provenance_path(out: str) -> str:
  """The provenance sidecar of constitution file ``out``."""
  return (out[:-5] if out.endswith(".json") else out) + ".provenance.json"


def collective_constitution(comments: str, votes: str, out: str, *,
                            num_groups: int | None = None, threshold: float = 0.6,
                            min_votes: int | None = None, min_group_votes: int = 5,
                            seed: int = 0, name: str | None = None):
  """Steps 1-4 of the module docstring: writes ``out`` and its provenance sidecar and returns
  (poll, clustering, scores); ``PolisError`` for a bad export or when nothing is selected."""
  poll = read_poll(comments, votes)
  min_votes = min(7, poll.votes.shape[1]) if min_votes is None else min_votes
  clustering = cluster(poll.votes, min_votes=min_votes, num_groups=num_groups, seed=seed)
  scores = score_statements(poll.votes, clustering.labels, clustering.num_groups,
                            threshold=threshold, min_group_votes=min_group_votes)
  selected = ranked(scores)
  if not selected:
    best = max(scores, key=lambda s: s.consensus)
    raise PolisError(f"no statement reaches consensus {threshold} in all "
                     f"{clustering.num_groups} groups (best: comment "
                     f"{poll.statement_ids[best.index]} at {best.consensus:.3f}); "
                     "lower --threshold or --min_group_votes")
  name = name or os.path.splitext(os.path.basename(out))[0]
  data = build_constitution(poll, selected, name=name, num_groups=clustering.num_groups)
  parse_constitution(data, source=out)  # never write a file the loader rejects
  text = json.dumps(data, indent=2, ensure_ascii=True) + "\n"
  workdir.write_text(out, text)
  params = {"comments": os.path.abspath(comments), "votes": os.path.abspath(votes),
            "num_groups": num_groups, "threshold": threshold, "min_votes": min_votes,
            "min_group_votes": min_group_votes, "seed": seed,
            "consensus": "min over groups of (agree + 1) / (seen + 2)"}
  sha = hashlib.sha256(text.encode("ascii")).hexdigest()
  workdir.write_json(provenance_path(out),
                     _provenance(poll, clustering, scores, params, sha, out), sort_keys=False)
  return poll, clustering, scores


def _table(poll: Poll, clustering: Clustering, scores: list[Score]) -> str:
  k = clustering.num_groups
  lines = [f"{k} opinion groups (silhouette {clustering.silhouette:.3f}), "
           f"{int((clustering.labels >= 0).sum())} of {len(poll.participants)} "
           "participants clustered:"]
  lines += [f"  group {g}: {(clustering.labels == g).sum()} participants" for g in range(k)]
  selected = ranked(scores)
  lines.append(f"{len(selected)} of {len(scores)} statements selected:")
  head = ["rank", "id", "consensus", "average"] + [f"g{g}" for g in range(k)] + ["statement"]
  lines.append("  " + " | ".join(head))
  for rank, s in enumerate(selected, 1):
    text = textwrap.shorten(poll.texts[s.index], 60, placeholder="...")
    cells = [str(rank), poll.statement_ids[s.index], f"{s.consensus:.3f}",
             f"{s.average:.3f}"] + [f"{p:.2f}" for p in s.p_agree] + [text]
    lines.append("  " + " | ".join(cells))
  return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
  """The command line (module docstring)."""
  ap = argparse.ArgumentParser(description=__doc__.split("\n\n", maxsplit=1)[0])
  ap.add_argument("--comments", required=True, help="Polis comments.csv")
  ap.add_argument("--votes", required=True, help="Polis participants-votes.csv")
  ap.add_argument("--out", required=True, help="constitution file to write (.json)")
  ap.add_argument("--num_groups", type=int, help="k (default: 2..5 by silhouette)")
  ap.add_argument("--threshold", type=float, default=0.6, help="min per-group agreement")
  ap.add_argument("--min_votes", type=int, help="votes to be clustered (min(7, #statements))")
  ap.add_argument("--min_group_votes", type=int, default=5, help="votes from every group")
  ap.add_argument("--seed", type=int, default=0)
  ap.add_argument("--name", help="constitution name (default: the file's stem)")
  args = ap.parse_args(argv)
  try:
    poll, clustering, scores = collective_constitution(**vars(args))
  except PolisError as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  print(_table(poll, clustering, scores))
  print(f"wrote {args.out} and {provenance_path(args.out)}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
