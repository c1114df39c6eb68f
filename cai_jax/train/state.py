"""The train state pytree, its shardings, and the pure jitted train step."""
from __future__ import annotations

from typing import Any, Callable

import flax.struct
import jax
import jax.numpy as jnp
import optax
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

LossFn = Callable[[Any, dict, jax.Array], tuple[jax.Array, dict]]


@flax.struct.dataclass
class TrainState:
  """Everything a training program checkpoints (besides data-iterator state).

  Attributes:
    step: int32 scalar, number of optimizer updates applied.
    params: nested dict of parameter arrays (see ``cai_jax.models.split``).
    opt_state: the optax state for ``params``.
  """

  step: jax.Array
  params: Any
  opt_state: Any


def create_state(params: Any, optimizer: optax.GradientTransformation) -> TrainState:
  return TrainState(step=jnp.zeros((), jnp.int32), params=params,
                    opt_state=optimizer.init(params))


def state_shardings(mesh: Mesh, params_shardings: Any, abstract_params: Any,
                    optimizer: optax.GradientTransformation) -> TrainState:
  """Shardings of a TrainState: optimizer moments follow their parameters.

  Leaves of the optimizer state shaped like a parameter (Adam's mu/nu) take that
  parameter's sharding; everything else (counts, scalars) is replicated.
  """
  replicated = NamedSharding(mesh, P())
  abstract_opt = jax.eval_shape(optimizer.init, abstract_params)
  is_sharding = lambda x: isinstance(x, NamedSharding)
  opt = optax.tree_map_params(optimizer, lambda _, s: s, abstract_opt, params_shardings,
                              transform_non_params=lambda _: replicated, is_leaf=is_sharding)
  return TrainState(step=replicated, params=params_shardings, opt_state=opt)


def abstract_state(shardings: TrainState, abstract_params: Any,
                   optimizer: optax.GradientTransformation) -> TrainState:
  """ShapeDtypeStructs of a TrainState carrying ``shardings`` (restore targets)."""
  shapes = jax.eval_shape(lambda p: create_state(p, optimizer), abstract_params)
  return jax.tree.map(lambda s, sh: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sh),
                      shapes, shardings)


def make_train_step(loss_fn: LossFn, optimizer: optax.GradientTransformation, *,
                    state_sharding: TrainState | None = None,
                    batch_sharding: Any = None) -> Callable:
  """Builds ``step(state, batch, rng) -> (state, metrics)``, jitted and donating.

  Args:
    loss_fn: ``loss_fn(params, batch, rng) -> (loss, aux_metrics)``.
    optimizer: the optax transformation.
    state_sharding: TrainState of shardings (None: let jit decide, one device).
    batch_sharding: sharding(s) of the batch dict.

  The step folds the step number into ``rng``, so a resumed run draws the same
  randomness as an uninterrupted one. If the loss or gradients are not finite the
  update is not applied (the returned state equals the input) and
  ``metrics["finite"]`` is False; the caller stops the run.
  """

  def step(state: TrainState, batch: dict, rng: jax.Array):
    rng = jax.random.fold_in(rng, state.step)
    (loss, aux), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params, batch, rng)
    updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    grad_norm = optax.tree.norm(grads)
    finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
    new = TrainState(step=state.step + 1, params=params, opt_state=opt_state)
    new = jax.tree.map(lambda n, o: jnp.where(finite, n, o), new, state)
    metrics = {"loss": loss, "grad_norm": grad_norm, "update_norm": optax.tree.norm(updates),
               "param_norm": optax.tree.norm(params), "finite": finite, **aux}
    return new, metrics

  if state_sharding is None:
    return jax.jit(step, donate_argnums=0)
  return jax.jit(step, in_shardings=(state_sharding, batch_sharding, None),
                 out_shardings=(state_sharding, None), donate_argnums=0)
