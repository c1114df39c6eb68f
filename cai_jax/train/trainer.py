"""The one trainer skeleton: sft, the preference model and DPO differ only in their data,
their loss and the kind of model they train.

A program builds its data (an iterator of host batches with ``get_state``/``set_state``)
and a ``ModelInit`` (where the parameters start), then calls ``fit``, which reads top to
bottom: abstract model -> optimizer -> shardings -> restore or init -> loop (with an
optional evaluation every ``eval_every`` steps, and with ``select`` the evaluated
parameters that score best kept as ``best_step{N}/``) -> save the model (the last or the
selected parameters) -> mark complete.

Resume order (``restore_or_init``): the run's own latest checkpoint in
``{workdir}/checkpoints`` > the init (a saved model, or a fresh initialisation).
"""
from __future__ import annotations

import dataclasses
import inspect
import logging
import math
from typing import Any, Callable, Iterator, Mapping

import gin
import jax
from flax import nnx
from jax.sharding import Mesh

from cai_jax import models
from cai_jax import paths
from cai_jax import workdir as workdir_lib
from cai_jax.models.api import Kind
from cai_jax.models.config import REMAT
from cai_jax.models.store import SavedModel, export_hf, save_model
from cai_jax.run import identity
from cai_jax.sharding import batch_putter
from cai_jax.train import state as state_lib
from cai_jax.train.checkpoint import Checkpointer
from cai_jax.train.loop import DivergenceGuard, train_loop
from cai_jax.train.metrics import MetricsWriter

_log = logging.getLogger(__name__)

MODEL_DIR = "model"
HF_DIR = "hf"
BEST_FILE = "best.json"


def model_dir(workdir: str) -> str:
  """Where a trainer saves its final model."""
  return paths.join(workdir, MODEL_DIR)


@dataclasses.dataclass(frozen=True)
class Schedule:
  """How long and how a trainer runs; every trainer program exposes these as arguments."""

  num_steps: int
  batch_size: int
  seed: int = 0
  ckpt_every: int = 200
  log_every: int = 10
  keep_checkpoints: int = 2


# The aux metric that ``fit`` weights accumulated micro-batches by when a loss reports it
# (the token count of a token-mean loss, e.g. sft's); losses that are per-example means
# (preference model, DPO) do not, and their equal micro-batches count equally.
ACCUM_WEIGHT = "target_tokens"


@dataclasses.dataclass(frozen=True)
class MemoryOptions:
  """How a trainer trades compute for memory; results stay the same (up to float
  rounding of the accumulated sums)."""

  grad_accum_steps: int = 1   # micro-batches per batch, one optimizer update
  remat: str = "none"         # ``ModelConfig.remat`` of the trained model's blocks

  def __post_init__(self):
    if self.grad_accum_steps < 1:
      raise ValueError(f"grad_accum_steps must be >= 1, got {self.grad_accum_steps}")
    if self.remat not in REMAT:
      raise ValueError(f"remat={self.remat!r}; expected one of {REMAT}")


@gin.configurable
def memory_options(*, grad_accum_steps: int = 1, remat: str = "none") -> MemoryOptions:
  """The memory options every ``fit`` (sft, preference model, DPO) trains with, set in gin:
  ``memory_options.grad_accum_steps = 4`` (each batch in 4 micro-batches: a quarter of
  the activations) and ``memory_options.remat = 'full'`` (recompute each block in the
  backward pass; see ``ModelConfig.remat``)."""
  return MemoryOptions(grad_accum_steps, remat)


def make_step(init: "ModelInit", loss: Callable[[nnx.GraphDef], state_lib.LossFn], tx: Any,
              shardings: state_lib.TrainState, batch_size: int,
              memory: MemoryOptions | None = None) -> Callable:
  """``fit``'s jitted train step for ``init``'s model under ``memory`` (default: the gin
  ``memory_options``); the batch must split into ``grad_accum_steps`` micro-batches."""
  memory = memory_options() if memory is None else memory
  if batch_size % memory.grad_accum_steps:
    raise ValueError(f"batch_size={batch_size} is not a multiple of "
                     f"grad_accum_steps={memory.grad_accum_steps}")
  cfg = init.config
  if memory.remat != cfg.remat:
    cfg = dataclasses.replace(cfg, remat=memory.remat)
  return state_lib.make_train_step(
      loss(models.abstract(cfg, init.kind)[0]), tx, state_sharding=shardings,
      grad_accum_steps=memory.grad_accum_steps, accum_weight=ACCUM_WEIGHT)


@dataclasses.dataclass(frozen=True)
class ModelInit:
  """Where a trained model's parameters start.

  Attributes:
    config: the architecture.
    kind: the kind trained ("lm" or "scalar").
    params: ``params(mesh)`` -> fresh parameters in the mesh's shardings (called only
      when there is no checkpoint to resume).
    source: the saved model folder it starts from (lineage); None from scratch.
  """

  config: models.ModelConfig
  kind: Kind
  params: Callable[[Mesh], Any]
  source: str | None = None

  @classmethod
  def saved(cls, model: SavedModel, kind: Kind | None = None) -> ModelInit:
    """From a saved model (a saved LM can start a scalar model: its backbone is copied)."""
    kind = kind or model.kind
    return cls(model.config, kind, lambda mesh: model.load(mesh=mesh, kind=kind)[1],
               model.path)

  @classmethod
  def scratch(cls, config: models.ModelConfig, kind: Kind = "lm", seed: int = 0) -> ModelInit:
    """A fresh initialisation, directly in the mesh's shardings."""
    return cls(config, kind, lambda mesh: models.init(config, kind, seed=seed, mesh=mesh)[1])


def optimizer_hparams(optimizer: Callable) -> dict[str, Any]:
  """An optimizer factory's settings (e.g. ``make_optimizer``'s learning rate): its
  signature's defaults, overridden by its gin bindings when it is a gin configurable."""
  ref = identity.gin_reference(optimizer)
  try:
    params = inspect.signature(ref[1] if ref else optimizer).parameters.values()
  except (TypeError, ValueError):
    params = []
  out = {p.name: p.default for p in params if p.default is not inspect.Parameter.empty}
  out.update(identity.gin_bindings(ref[2]) if ref else {})
  return {"name": ref[0] if ref else getattr(optimizer, "__qualname__", repr(optimizer)),
          **out}


def run_hparams(program: str, schedule: Schedule, init: ModelInit, optimizer: Callable,
                eval_every: int = 0, select: str | None = None) -> dict[str, Any]:
  """A ``fit`` run's hyperparameters for ``MetricsWriter.hparams`` (nested; flattened
  there): the schedule, the optimizer's settings, the model and where it starts."""
  memory = memory_options()
  return {"program": program, **dataclasses.asdict(schedule), "eval_every": eval_every,
          "select": select, "kind": init.kind, "init_from": init.source,
          "optimizer": optimizer_hparams(optimizer), "model": init.config.to_dict(),
          **({"memory": dataclasses.asdict(memory)} if memory != MemoryOptions() else {})}


def restore_or_init(ckpt: Checkpointer, target: Any, init: Callable[[], Any]
                    ) -> tuple[Any, dict | None]:
  """This run's latest checkpoint restored into ``target`` (ShapeDtypeStructs carrying
  shardings), or ``init()`` when there is none. Returns (state, checkpoint metadata or
  None)."""
  if ckpt.latest_step() is not None:
    state, meta = ckpt.restore(target)
    _log.info("resumed from step %d", ckpt.latest_step())
    return state, meta
  return init(), None


@dataclasses.dataclass(frozen=True)
class StateLayout:
  """A ``TrainState``'s shardings, its restore target and its jitted constructor."""

  shardings: state_lib.TrainState
  target: state_lib.TrainState
  create: Callable[[Any], state_lib.TrainState]   # params -> fresh state, in shardings


def state_layout(mesh: Mesh, abstract_params: Any, param_shardings: Any,
                 optimizer: Any) -> StateLayout:
  """Shapes and shardings of the train state of ``abstract_params`` (optimizer moments
  follow their parameters), before any array exists."""
  shardings = state_lib.state_shardings(mesh, param_shardings, abstract_params, optimizer)
  return StateLayout(
      shardings, state_lib.abstract_state(shardings, abstract_params, optimizer),
      jax.jit(lambda p: state_lib.create_state(p, optimizer), out_shardings=shardings))


def keep_if_best(workdir: str, step: int, metric: str, value: float, params: Any,
                 init: ModelInit) -> bool:
  """Saves ``params`` as ``{workdir}/best_step{step}/`` and names it in ``best.json`` when
  ``value`` is lower than the best so far (then the previous best folder goes); returns
  whether it did. ``best.json`` is written after the folder is complete, so a killed run
  never points at a half-written model."""
  path = paths.join(workdir, BEST_FILE)
  best = workdir_lib.read_json(path) if paths.exists(path) else None
  if not math.isfinite(value) or (best is not None and (
      step <= best["step"] or not value < best["value"])):
    return False
  folder = f"best_step{step}"
  save_model(paths.join(workdir, folder), params, init.config, kind=init.kind,
             info={"step": step, metric: value})
  workdir_lib.write_json(path, {"metric": metric, "step": step, "value": value,
                                "model": folder})
  if best is not None and best["model"] != folder and jax.process_index() == 0:
    paths.rmtree(paths.join(workdir, best["model"]), missing_ok=True)
  return True


def selected_params(workdir: str, program: str, select: str, mesh: Mesh, init: ModelInit,
                    num_steps: int) -> tuple[Any, dict]:
  """The parameters ``keep_if_best`` kept, and the saved model's info entries naming them."""
  if not paths.exists(paths.join(workdir, BEST_FILE)):
    raise RuntimeError(f"{program}: select={select!r}: no evaluation gave a finite value")
  best = workdir_lib.read_json(paths.join(workdir, BEST_FILE))
  params = SavedModel.open(paths.join(workdir, best["model"])).load(
      mesh=mesh, kind=init.kind)[1]
  _log.info("%s: keeping step %d (%s %.4f) of %d", program, best["step"], select,
            best["value"], num_steps)
  print(f"{program}: step {best['step']} of {num_steps} kept ({select} "
        f"{best['value']:.4f}, the lowest)", flush=True)
  return params, {"selected_step": best["step"], "selected_by": {select: best["value"]}}


def fit(workdir: str, *, program: str, mesh: Mesh, init: ModelInit,
        loss: Callable[[nnx.GraphDef], state_lib.LossFn], batches: Iterator[dict],
        schedule: Schedule, optimizer: Callable, info: Mapping[str, Any],
        prepare: Callable[[dict], dict] | None = None,
        evaluate: Callable[[Any], dict[str, float]] | None = None,
        eval_every: int = 0, select: str | None = None, hf_export: bool = False) -> str:
  """Trains ``init``'s model on ``batches``; returns the saved model folder.

  Args:
    workdir: the program's folder (``checkpoints/``, metrics, ``model/``, ``DONE``).
    program: its name (logs, progress bar, the saved model's info).
    mesh: the device mesh; batches are sharded over data x fsdp.
    init: where the parameters start.
    loss: ``loss(graphdef) -> loss_fn(params, batch, rng) -> (loss, aux)``.
    batches: endless iterator of host batches with ``get_state``/``set_state``.
    schedule: steps, batch size, seed, checkpoint and log cadence.
    optimizer: ``optimizer(total_steps=...) -> (optax transform, schedule)``.
    info: extra entries of the saved model's info (tokenizer_path, train_data, ...).
    prepare: device batch -> device batch, run before each step (e.g. adds DPO's
      frozen reference log-probs).
    evaluate, eval_every: ``evaluate(params) -> metrics`` run every ``eval_every`` steps
      (0: only at the end) and at the end; logged at that step.
    select: an ``evaluate`` metric to minimise (e.g. ``"eval/loss"``): the parameters of
      the evaluation (every ``eval_every`` steps and the end) where it is lowest become
      the saved model, instead of the last ones (early stopping on held-out data; ties keep
      the earlier step). ``{workdir}/best.json`` names the step and its value.
    hf_export: also write the trained LM as a Hugging Face folder ``{workdir}/hf``.
  """
  if select is not None and evaluate is None:
    raise ValueError(f"{program}: select={select!r} needs an evaluation (evaluate/eval data)")
  if hf_export and init.kind != "lm":
    raise ValueError(f"{program}: hf_export writes a causal LM; a {init.kind!r} model has "
                     "no Hugging Face export")
  put = batch_putter(mesh, schedule.batch_size)   # checks the batch size first
  put_batch = put if prepare is None else (lambda b: prepare(put(b)))
  _, abstract_params, _ = models.abstract(init.config, init.kind)
  _log.info("%s: %s parameters (%s)", program, f"{models.count_params(abstract_params):,}",
            f"from {init.source}" if init.source else "from scratch")
  tx, lr_schedule = optimizer(total_steps=schedule.num_steps)
  ckpt = Checkpointer(paths.join(workdir, "checkpoints"),
                      max_to_keep=schedule.keep_checkpoints)
  layout = state_layout(mesh, abstract_params,
                        models.param_shardings(init.config, mesh, init.kind), tx)
  step_fn = make_step(init, loss, tx, layout.shardings, schedule.batch_size)
  state, meta = restore_or_init(ckpt, layout.target, lambda: layout.create(init.params(mesh)))
  if meta is not None:
    batches.set_state(meta["data_state"])

  # --- Loop, in stretches between evaluations ---------------------------------------
  stretch = eval_every if (evaluate is not None and eval_every) else schedule.num_steps
  resumed, guard = int(jax.device_get(state.step)), DivergenceGuard()

  def evaluated(step: int, metrics: dict[str, float]) -> None:
    if select is not None:
      if select not in metrics:
        raise KeyError(f"{program}: select={select!r} is not an evaluation metric; it "
                       f"reports {sorted(metrics)}")
      keep_if_best(workdir, step, select, float(metrics[select]), state.params, init)

  with MetricsWriter(workdir, resume_step=resumed) as writer, jax.set_mesh(mesh):
    writer.hparams(run_hparams(program, schedule, init, optimizer, eval_every, select))
    if (evaluate is not None and resumed and resumed % stretch == 0
        and not writer.logged(resumed, "eval/")):   # killed between checkpoint and eval
      m = evaluate(state.params)
      writer.write(resumed, m)
      evaluated(resumed, m)
    elif select is not None and resumed and resumed % stretch == 0:   # killed while keeping
      best = workdir_lib.read_json(paths.join(workdir, BEST_FILE)) if paths.exists(
          paths.join(workdir, BEST_FILE)) else None
      if best is None or best["step"] < resumed:
        evaluated(resumed, evaluate(state.params))
    while (start := int(jax.device_get(state.step))) < schedule.num_steps:
      stop = min(schedule.num_steps, (start // stretch + 1) * stretch)
      state = train_loop(state=state, step_fn=step_fn, batches=batches, num_steps=stop,
                         rng=jax.random.key(schedule.seed), put_batch=put_batch,
                         checkpointer=ckpt, writer=writer, schedule=lr_schedule,
                         ckpt_every=schedule.ckpt_every, log_every=schedule.log_every,
                         data_state=batches.get_state,
                         metadata={"model_config": init.config.to_dict()}, desc=program,
                         guard=guard)
      if evaluate is not None:
        m = evaluate(state.params)
        writer.write(stop, m)
        evaluated(stop, m)
        _log.info("%s: step %d eval %s", program, stop, {k: round(v, 4) for k, v in m.items()})
  ckpt.close()

  # --- Save the model (the last or the selected parameters), mark complete -------------
  params, chosen = state.params, {}
  if select is not None:
    params, chosen = selected_params(workdir, program, select, mesh, init,
                                     schedule.num_steps)
  out = save_model(model_dir(workdir), params, init.config, kind=init.kind, info={
      "program": program, "init_from": init.source, "num_steps": schedule.num_steps,
      **chosen, **info})
  if hf_export:
    export_hf(params, init.config, paths.join(workdir, HF_DIR),
              tokenizer_path=info.get("tokenizer_path"))
  workdir_lib.mark_done(workdir, f"step {schedule.num_steps}\n")
  return out
