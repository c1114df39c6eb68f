"""The one trainer skeleton: sft, the preference model and DPO differ only in their data,
their loss and the kind of model they train.

A program builds its data (an iterator of host batches with ``get_state``/``set_state``)
and a ``ModelInit`` (where the parameters start), then calls ``fit``, which reads top to
bottom: abstract model -> optimizer -> shardings -> restore or init -> loop (with an
optional evaluation every ``eval_every`` steps) -> save the model -> mark complete.

Resume order (``restore_or_init``): the run's own latest checkpoint in
``{workdir}/checkpoints`` > the init (a saved model, or a fresh initialisation).
"""
from __future__ import annotations

import dataclasses
import logging
import os
from typing import Any, Callable, Iterator, Mapping

import jax
from flax import nnx
from jax.sharding import Mesh

from cai_jax import models
from cai_jax import workdir as workdir_lib
from cai_jax.models.api import Kind
from cai_jax.models.store import SavedModel, export_hf, save_model
from cai_jax.sharding import batch_putter
from cai_jax.train import state as state_lib
from cai_jax.train.checkpoint import Checkpointer
from cai_jax.train.loop import DivergenceGuard, train_loop
from cai_jax.train.metrics import MetricsWriter

_log = logging.getLogger(__name__)

MODEL_DIR = "model"
HF_DIR = "hf"


def model_dir(workdir: str) -> str:
  """Where a trainer saves its final model."""
  return os.path.join(workdir, MODEL_DIR)


@dataclasses.dataclass(frozen=True)
class Schedule:
  """How long and how a trainer runs; every trainer program exposes these as arguments."""

  num_steps: int
  batch_size: int
  seed: int = 0
  ckpt_every: int = 200
  log_every: int = 10
  keep_checkpoints: int = 2


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


def fit(workdir: str, *, program: str, mesh: Mesh, init: ModelInit,
        loss: Callable[[nnx.GraphDef], state_lib.LossFn], batches: Iterator[dict],
        schedule: Schedule, optimizer: Callable, info: Mapping[str, Any],
        prepare: Callable[[dict], dict] | None = None,
        evaluate: Callable[[Any], dict[str, float]] | None = None,
        eval_every: int = 0, hf_export: bool = False) -> str:
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
    evaluate: ``evaluate(params) -> metrics`` run every ``eval_every`` steps (0: only at
      the end) and at the end; logged at that step.
    eval_every: see ``evaluate``.
    hf_export: also write the trained LM as a Hugging Face folder ``{workdir}/hf``.
  """
  if hf_export and init.kind != "lm":
    raise ValueError(f"{program}: hf_export writes a causal LM; a {init.kind!r} model has "
                     "no Hugging Face export")
  put = batch_putter(mesh, schedule.batch_size)   # checks the batch size first
  put_batch = put if prepare is None else (lambda b: prepare(put(b)))
  graphdef, abstract_params, _ = models.abstract(init.config, init.kind)
  _log.info("%s: %s parameters (%s)", program, f"{models.count_params(abstract_params):,}",
            f"from {init.source}" if init.source else "from scratch")
  tx, lr_schedule = optimizer(total_steps=schedule.num_steps)
  ckpt = Checkpointer(os.path.join(workdir, "checkpoints"),
                      max_to_keep=schedule.keep_checkpoints)
  layout = state_layout(mesh, abstract_params,
                        models.param_shardings(init.config, mesh, init.kind), tx)
  state, meta = restore_or_init(ckpt, layout.target, lambda: layout.create(init.params(mesh)))
  if meta is not None:
    batches.set_state(meta["data_state"])
  step_fn = state_lib.make_train_step(loss(graphdef), tx, state_sharding=layout.shardings)

  # --- Loop, in stretches between evaluations ---------------------------------------
  stretch = eval_every if (evaluate is not None and eval_every) else schedule.num_steps
  resumed, guard = int(jax.device_get(state.step)), DivergenceGuard()
  with MetricsWriter(workdir, resume_step=resumed) as writer, jax.set_mesh(mesh):
    if (evaluate is not None and resumed and resumed % stretch == 0
        and not writer.logged(resumed, "eval/")):   # killed between checkpoint and eval
      writer.write(resumed, evaluate(state.params))
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
        _log.info("%s: step %d eval %s", program, stop, {k: round(v, 4) for k, v in m.items()})
  ckpt.close()

  # --- Save the model, mark complete -------------------------------------------------
  out = save_model(model_dir(workdir), state.params, init.config, kind=init.kind, info={
      "program": program, "init_from": init.source, "num_steps": schedule.num_steps,
      **info})
  if hf_export:
    export_hf(state.params, init.config, os.path.join(workdir, HF_DIR),
              tokenizer_path=info.get("tokenizer_path"))
  workdir_lib.mark_done(workdir, f"step {schedule.num_steps}\n")
  return out
