"""Sweeps: one experiment run over a grid of settings and seeds, with one table across runs.

``sweep`` runs an experiment gin file once per combination of its ``axes`` and ``seeds``,
each as its own process and workdir (``python -m cai_jax.main --gin_file=<experiment>
<settings> --gin_param=SEED=<k> --workdir=<workdir>/<run>``), so every run is exactly a
command a user (or a cluster job) would type: resumable, checked by its run identity, and
skipped quickly when complete. An axis maps value labels to settings; a setting ending in
``.gin`` is a gin file added after the experiment (it overrides its bindings), anything else
is a ``--gin_param`` binding. A scaling-trend study sweeps model sizes, a gin ablation any
binding::

    sweep.axes = {'size': {'xs': ['models/toy_xs.gin'], 's': ['models/toy_s.gin']}}
    sweep.axes = {'kl': {'0.02': ['ppo.kl_coef=0.02'], '0.1': ['ppo.kl_coef=0.1']}}

``commands.sh`` lists every run's command (``launch=False`` only writes it and collects the
runs already complete). Then every run's ``metrics`` are read (``"<file>.json:<key.path>"``,
relative to the run's workdir, list items by index; or ``"params:<model folder>"``, the
parameter count of a saved model) into ``results.json`` (per run) and ``results.md`` (mean
+- sample standard deviation over seeds per setting), and, with ``x_metric``, the trend
figure ``trends.png`` / ``trends.svg``: every other metric against it, seeds as error bars.
A run that fails is reported and the others go on; the sweep then raises, naming it.
"""
from __future__ import annotations

import itertools
import logging
import shlex
import subprocess
import sys
from typing import Mapping, Sequence

import gin
import numpy as np

from cai_jax import paths
from cai_jax import workdir as workdir_lib
from cai_jax.evaluation import plots
from cai_jax.models.store import SavedModel
from cai_jax.run.lock import WorkdirLock

_log = logging.getLogger(__name__)


def runs_of(axes: Mapping[str, Mapping[str, Sequence[str]]], seeds: Sequence[int]
            ) -> list[dict]:
  """Every combination: ``{"name", "setting": {axis: label}, "seed", "settings": [...]}``."""
  names = list(axes)
  out = []
  for labels in itertools.product(*(list(axes[a]) for a in names)):
    for seed in seeds:
      settings = [s for a, lab in zip(names, labels) for s in axes[a][lab]]
      name = "_".join(f"{a}-{lab}" for a, lab in zip(names, labels))
      out.append({"name": f"{name}_seed{seed}" if name else f"seed{seed}",
                  "setting": dict(zip(names, labels)), "seed": seed, "settings": settings})
  return out


def command(experiment: str, run: dict, workdir: str, seed_binding: str,
            extra_gin: Sequence[str]) -> list[str]:
  """The ``cai_jax.main`` command line of one run."""
  cmd = [sys.executable, "-m", "cai_jax.main", f"--gin_file={experiment}"]
  cmd += [f"--gin_file={s}" for s in run["settings"] if s.endswith(".gin")]
  cmd += [f"--gin_param={seed_binding}={run['seed']}"]
  cmd += [f"--gin_param={s}" for s in list(run["settings"]) + list(extra_gin)
          if not s.endswith(".gin")]
  return cmd + [f"--workdir={workdir}"]


def read_metric(run_dir: str, spec: str):
  """One metric of a run (module docstring); None when its file or key is missing."""
  if spec.startswith("params:"):
    path = paths.join(run_dir, spec[len("params:"):])
    return SavedModel.open(path).config.num_params() if SavedModel.exists(path) else None
  file, _, keys = spec.partition(":")
  path = paths.join(run_dir, file)
  if not paths.exists(path):
    return None
  value = workdir_lib.read_json(path)
  for key in keys.split(".") if keys else ():
    if isinstance(value, list) and key.lstrip("-").isdigit() and -len(value) <= int(key) < len(value):
      value = value[int(key)]
    elif isinstance(value, dict) and key in value:
      value = value[key]
    else:
      return None
  return value if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def _mean_sd(values) -> tuple[float, float, int]:
  xs = np.array([v for v in values if v is not None and np.isfinite(v)], float)
  if not len(xs):
    return float("nan"), float("nan"), 0
  return float(xs.mean()), float(xs.std(ddof=1)) if len(xs) > 1 else 0.0, len(xs)


def _fmt(m: float, s: float, n: int) -> str:
  if not n:
    return "-"
  digits = 0 if abs(m) >= 100 else 3
  return f"{m:.{digits}f} ± {s:.{digits}f}" + (f" (n={n})" if n else "")


def summarize(runs: list[dict], axes: Sequence[str], metrics: Sequence[str]) -> tuple[str, list]:
  """Markdown table (one row per setting: mean +- sd over its seeds) and the groups."""
  groups: dict[tuple, list[dict]] = {}
  for r in runs:
    groups.setdefault(tuple(r["setting"][a] for a in axes), []).append(r)
  lines = ["| " + " | ".join(list(axes) + ["seeds"] + list(metrics)) + " |",
           "|---" * (len(axes) + 1 + len(metrics)) + "|"]
  rows = []
  for key, members in groups.items():
    stats = {m: _mean_sd([r["metrics"].get(m) for r in members]) for m in metrics}
    rows.append({"setting": dict(zip(axes, key)), "seeds": [r["seed"] for r in members],
                 "stats": stats})
    lines.append("| " + " | ".join(list(key) + [",".join(str(r["seed"]) for r in members)]
                                   + [_fmt(*stats[m]) for m in metrics]) + " |")
  return "\n".join(lines) + "\n", rows


def trend_panels(groups: list, metrics: Sequence[str], x_metric: str, x_axis: str | None,
                 *, logx: bool) -> list[dict]:
  """One panel per metric: its mean +- sd against ``x_metric``'s mean, one series per
  setting of the axes other than ``x_axis`` (the one ``x_metric`` varies with)."""
  panels = []
  for m in metrics:
    if m == x_metric:
      continue
    series: dict[str, tuple[list, list, list]] = {}
    for g in sorted(groups, key=lambda g: g["stats"][x_metric][0]):
      x, (mean, sd, n) = g["stats"][x_metric][0], g["stats"][m]
      if not n or not np.isfinite(x):
        continue
      label = ", ".join(f"{a}={v}" for a, v in g["setting"].items()
                        if a != x_axis) or m
      xs, ys, es = series.setdefault(label, ([], [], []))
      xs.append(x), ys.append(mean), es.append(sd)
    panels.append({"title": m, "xlabel": x_metric, "ylabel": m, "logx": logx,
                   "series": series})
  return panels


@gin.configurable
def sweep(workdir: str, *, experiment: str = gin.REQUIRED,
          axes: Mapping[str, Mapping[str, Sequence[str]]] = gin.REQUIRED,
          seeds: Sequence[int] = (0,), seed_binding: str = "SEED",
          metrics: Mapping[str, str] = gin.REQUIRED, x_metric: str | None = None,
          x_axis: str | None = None, logx: bool = True, extra_gin: Sequence[str] = (), launch: bool = True) -> str:
  """Runs the grid and writes the table and trends; returns ``{workdir}/results.json``.

  Args:
    workdir: output folder; run ``<name>`` works in ``{workdir}/<name>``.
    experiment: the gin file every run runs.
    axes: {axis: {label: [settings]}} (module docstring); {} for seeds only.
    seeds: each setting runs once per seed, with ``--gin_param=<seed_binding>=<seed>``.
    metrics: {column: spec} read from every run (module docstring).
    x_metric: the column the trend figure puts on its x axis (e.g. parameter count).
    x_axis: the axis ``x_metric`` follows (default: the first); the trend figure draws a
      line per setting of the other axes.
    logx: a logarithmic x axis.
    extra_gin: more bindings for every run.
    launch: False: only write ``commands.sh`` and collect the complete runs.
  """
  if x_metric is not None and x_metric not in metrics:
    raise ValueError(f"sweep.x_metric {x_metric!r} is not one of the metrics "
                     f"({', '.join(metrics)})")
  if not seeds:
    raise ValueError("sweep.seeds is empty")
  x_axis = x_axis or next(iter(axes), None)
  if x_axis is not None and x_axis not in axes:
    raise ValueError(f"sweep.x_axis {x_axis!r} is not one of the axes ({', '.join(axes)})")
  for axis, values in axes.items():
    if not values:
      raise ValueError(f"sweep.axes[{axis!r}] has no values")
  with WorkdirLock(workdir, "sweep"):
    return _sweep(workdir, experiment, axes, seeds, seed_binding, metrics, x_metric, x_axis,
                  logx, extra_gin, launch)


def _sweep(workdir, experiment, axes, seeds, seed_binding, metrics, x_metric, x_axis, logx,
           extra_gin, launch) -> str:
  """``sweep``'s work, under the sweep folder's lock."""
  runs = runs_of(axes, seeds)
  for r in runs:
    r["workdir"] = paths.join(workdir, r["name"])
    r["command"] = command(experiment, r, r["workdir"], seed_binding, extra_gin)
  workdir_lib.write_text(paths.join(workdir, "commands.sh"), "#!/usr/bin/env bash\n" + "".join(
      " ".join(shlex.quote(c) for c in ["python"] + r["command"][1:]) + "\n" for r in runs))
  failed = []
  for k, r in enumerate(runs):
    if launch:
      print(f"sweep: run {k + 1}/{len(runs)} {r['name']}", flush=True)
      if subprocess.run(r["command"], check=False).returncode != 0:
        failed.append(r["name"])
    r["complete"] = paths.exists(paths.join(r["workdir"], workdir_lib.DONE_FILE))
    r["metrics"] = {m: read_metric(r["workdir"], spec) for m, spec in metrics.items()}
  table, groups = summarize(runs, list(axes), list(metrics))
  workdir_lib.write_text(paths.join(workdir, "results.md"), table)
  workdir_lib.write_json(paths.join(workdir, "results.json"), {
      "experiment": experiment, "axes": {a: list(v) for a, v in axes.items()},
      "seeds": list(seeds), "metrics": dict(metrics), "failed": failed,
      "runs": [{k: r[k] for k in ("name", "setting", "seed", "workdir", "complete", "metrics")}
               for r in runs],
      "groups": [{**g, "stats": {m: list(s) for m, s in g["stats"].items()}} for g in groups]},
      sort_keys=False)
  if x_metric is not None:
    panels = [p for p in trend_panels(groups, list(metrics), x_metric, x_axis, logx=logx)
              if p["series"]]
    if panels:
      plots.trend_plot(paths.join(workdir, "trends"), panels)
  print("\n" + table, flush=True)
  if failed:
    raise RuntimeError(f"sweep: {len(failed)} of {len(runs)} runs failed: {', '.join(failed)} "
                       f"(their logs are above; rerun the sweep to resume them)")
  return paths.join(workdir, "results.json")
