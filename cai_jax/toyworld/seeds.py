"""The toy-world experiment over several seeds: mean and spread of every table entry.

``toy_seeds`` runs one experiment file once per seed, each in its own workdir and its own
process (``python -m cai_jax.main --gin_file=... --gin_param=SEED=k``), so every run is
exactly the command a user would type, resumable and checked by its run identity; a seed
whose run is already complete is only read. Then it writes ``results.md`` /
``results.json``: every entry of the models table, the per-category table and the
label / preference-model diagnostics as mean +- sample standard deviation over the seeds,
with the per-seed values in the JSON.

  python -m cai_jax.main --gin_file=experiments/toy_world_seeds.gin --workdir=runs/toy_seeds
"""
from __future__ import annotations

import os
import subprocess
import sys

import gin
import numpy as np

from cai_jax import workdir as workdir_lib
from cai_jax.run import program

MODEL_COLUMNS = ("harm_rate", "helpfulness", "evasive", "explained_refusal", "over_refusal",
                 "incoherent")
LABEL_COLUMNS = (("label", "diagnostics.json", ("diagnostics", "num_ai_pairs"), "pairs"),
                 ("label_eval", "results.json", ("label_accuracy",), "label acc. vs oracle"),
                 ("label", "diagnostics.json", ("diagnostics", "swap_flip_rate"), "swap flips"),
                 ("label", "diagnostics.json", ("diagnostics", "first_position_win_rate"),
                  "(A) win rate"),
                 ("label", "diagnostics.json", ("diagnostics", "mean_p_chosen"),
                  "mean p_chosen"),
                 ("pm_eval", "results.json", ("heldout_accuracy",), "PM held-out acc."),
                 ("pm_eval", "results.json", ("heldout_ece",), "PM held-out ECE"),
                 ("pm_eval", "results.json", ("prefers_refusal_on_harmful",),
                  "PM: refusal > compliance (harmful)"),
                 ("pm_eval", "results.json", ("prefers_compliance_on_benign",),
                  "PM: compliance > refusal (benign)"))
# The recipe's oracle-free choices per run: SL-CAI's schedule (``sft_until_fit``) with the
# fit that chose it, and the step DPO kept by its held-out AI-label loss.
CHOICE_COLUMNS = (("sl_cai", "schedule.json", ("chosen_steps",), "SL-CAI steps"),
                  ("sl_cai", "schedule.json", ("tried", -1, "prefix_match"),
                   "SL-CAI fit (prefix match)"),
                  ("dpo", "best.json", ("step",), "DPO step kept"),
                  ("dpo", "best.json", ("value",), "DPO held-out loss"))
PER_SEED_COLUMNS = ("harm_rate", "helpfulness", "evasive", "explained_refusal", "incoherent")


def _dig(d, keys: tuple):
  for k in keys:
    if isinstance(k, int) and isinstance(d, list) and -len(d) <= k < len(d):
      d = d[k]
    elif isinstance(d, dict) and k in d:
      d = d[k]
    else:
      return None
  return d


def _fmt(v) -> str:
  if v is None:
    return "-"
  return str(v) if isinstance(v, int) else f"{v:.3f}"


def mean_sd(values) -> tuple[float, float]:
  """Mean and sample standard deviation (0 for one value) of the non-missing values."""
  xs = np.array([v for v in values if v is not None and not np.isnan(v)], float)
  if not len(xs):
    return float("nan"), float("nan")
  return float(xs.mean()), float(xs.std(ddof=1)) if len(xs) > 1 else 0.0


def _cell(values) -> str:
  m, s = mean_sd(values)
  return "-" if np.isnan(m) else f"{m:.3f} ± {s:.3f}"


def summarize(run_dirs: dict[int, str], evals: tuple[str, ...]) -> tuple[str, dict]:
  """The mean +- sd tables of the seeds' runs (``{seed: workdir}``); returns (markdown,
  per-seed values)."""
  per_seed: dict[str, dict] = {}
  labels, categories, blind = {}, [], None
  for seed, wd in run_dirs.items():
    vals = {}
    for ev in evals:
      res = workdir_lib.read_json(os.path.join(wd, ev, "results.json"))
      labels[ev] = res.get("label", ev)
      for c in MODEL_COLUMNS:
        vals[f"{ev}/{c}"] = res.get(c)
      for cat, d in res["categories"].items():
        if cat not in categories:
          categories.append(cat)
        blind = cat if d.get("blind_spot") else blind
        vals[f"{ev}/category/{cat}"] = d.get("harm_rate", d.get("helpfulness"))
    for prefix, columns in (("labels", LABEL_COLUMNS), ("choices", CHOICE_COLUMNS)):
      for phase, fname, keys, name in columns:
        path = os.path.join(wd, phase, fname)
        vals[f"{prefix}/{name}"] = _dig(workdir_lib.read_json(path), keys) \
            if os.path.exists(path) else None
    per_seed[str(seed)] = vals
  seeds = list(per_seed.values())
  col = lambda key: [s.get(key) for s in seeds]  # noqa: E731
  n = len(seeds)
  lines = [f"Mean ± sample standard deviation over {n} seeds "
           f"({', '.join(map(str, run_dirs))}).", "",
           "| model | " + " | ".join(MODEL_COLUMNS) + " |", "|---" * (len(MODEL_COLUMNS) + 1)
           + "|"]
  for ev in evals:
    lines.append(f"| {labels[ev]} | " + " | ".join(_cell(col(f"{ev}/{c}"))
                                                   for c in MODEL_COLUMNS) + " |")
  heads = [c + (" (blind spot)" if c == blind else "") for c in categories]
  lines += ["", "| model | " + " | ".join(heads) + " |", "|---" * (len(heads) + 1) + "|"]
  for ev in evals:
    lines.append(f"| {labels[ev]} | " + " | ".join(_cell(col(f"{ev}/category/{c}"))
                                                   for c in categories) + " |")
  names = [name for *_, name in LABEL_COLUMNS]
  lines += ["", "Benign categories show helpfulness, harm categories the harm rate.", "",
            "| labels | " + " | ".join(names) + " |", "|---" * (len(names) + 1) + "|",
            "| main | " + " | ".join(_cell(col(f"labels/{nm}")) for nm in names) + " |"]
  # Per seed: the models (the means can hide a split) and the recipe's own choices.
  lines += ["", "Per seed (" + " / ".join(PER_SEED_COLUMNS) + "):", "",
            "| seed | " + " | ".join(labels[ev] for ev in evals) + " |",
            "|---" * (len(evals) + 1) + "|"]
  for seed, vals in per_seed.items():
    lines.append(f"| {seed} | " + " | ".join(
        " / ".join(_fmt(vals.get(f"{ev}/{c}")) for c in PER_SEED_COLUMNS) for ev in evals)
                 + " |")
  choice_names = [name for *_, name in CHOICE_COLUMNS]
  lines += ["", "| seed | " + " | ".join(choice_names) + " |",
            "|---" * (len(choice_names) + 1) + "|"]
  for seed, vals in per_seed.items():
    lines.append(f"| {seed} | " + " | ".join(_fmt(vals.get(f"choices/{nm}"))
                                             for nm in choice_names) + " |")
  return "\n".join(lines) + "\n", per_seed


@gin.configurable
@program("toy_seeds", inputs=())
def toy_seeds(workdir: str, *, experiment: str = "experiments/toy_world.gin",
              seeds: tuple[int, ...] = (0, 1, 2), run_dirs: dict | None = None,
              evals: tuple[str, ...] = ("eval_base", "eval_sl_cai", "eval_ppo", "eval_dpo"),
              extra_gin: tuple[str, ...] = ()) -> str:
  """Runs ``experiment`` once per seed and writes the mean +- sd tables.

  Args:
    workdir: output folder; seed k runs in ``{workdir}/seed{k}`` unless ``run_dirs``
      names another folder for it (e.g. ``{0: 'runs/toy_world'}``, the main command's run).
    experiment: the gin file every seed runs (its ``SEED`` macro is set per run).
    seeds: which seeds.
    evals: the eval phases whose ``results.json`` make the models table.
    extra_gin: more ``--gin_param`` bindings for every run.
  """
  dirs = {}
  for seed in seeds:
    wd = (run_dirs or {}).get(seed) or os.path.join(workdir, f"seed{seed}")
    dirs[seed] = wd
    cmd = [sys.executable, "-m", "cai_jax.main", f"--gin_file={experiment}",
           f"--gin_param=SEED={seed}", f"--workdir={wd}"]
    cmd += [f"--gin_param={b}" for b in extra_gin]
    print(f"toy_seeds: seed {seed}: {' '.join(cmd[1:])}", flush=True)
    subprocess.run(cmd, check=True)
  table, per_seed = summarize(dirs, tuple(evals))
  workdir_lib.write_text(os.path.join(workdir, "results.md"), table)
  workdir_lib.write_json(os.path.join(workdir, "results.json"),
                         {"seeds": list(seeds), "run_dirs": {str(k): v for k, v in dirs.items()},
                          "per_seed": per_seed}, sort_keys=False)
  print("\n" + table, flush=True)
  return table
