"""The train state pytree, its shardings, the pure jitted train step, and the same step
scanned over on-device minibatches (``make_train_epochs``)."""
from __future__ import annotations

from typing import Any, Callable

import flax.struct
import jax
import jax.numpy as jnp
import optax
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from cai_jax.sharding import constrain

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


AccumWeight = str | Callable[[dict, dict], jax.Array] | None


def _split_micro(batch: dict, k: int) -> dict:
  """[b, ...] leaves -> [k, b / k, ...]; micro-batch ``i`` holds rows ``i, i + k, ...`` so
  that every device's block of rows (the batch axis is sharded in contiguous blocks)
  feeds every micro-batch."""
  def split(x):
    if x.shape[0] % k:
      raise ValueError(f"grad_accum_steps={k} does not divide the batch of {x.shape[0]} "
                       "rows; choose a batch size that is a multiple of it")
    return jnp.swapaxes(x.reshape(x.shape[0] // k, k, *x.shape[1:]), 0, 1)
  return jax.tree.map(split, batch)


def _micro_weight(weight: AccumWeight, batch: dict, aux: dict) -> jax.Array:
  if callable(weight):
    return jnp.asarray(weight(batch, aux), jnp.float32)
  if weight is not None and weight in aux:
    return jnp.asarray(aux[weight], jnp.float32)
  return jnp.float32(1.0)


def accumulated_value_and_grad(loss_fn: LossFn, params: Any, batch: dict, rng: jax.Array,
                               steps: int, weight: AccumWeight = None):
  """``value_and_grad(loss_fn, has_aux=True)`` over ``batch`` cut into ``steps``
  micro-batches, one at a time (``lax.scan``: one micro-batch's activations live at once).

  Micro-batch ``i`` (rows ``i::steps``, rng folded with ``i``) counts with weight ``w_i``:
  ``weight`` names an aux metric holding its loss's normaliser (e.g. ``target_tokens`` of
  a token-mean loss; a name the loss does not report means equal weights), or is
  ``weight(micro_batch, aux) -> w``. The loss, the gradient and every aux metric are the
  ``w``-weighted means (the weight metric itself is summed), so a loss that is a mean over
  tokens (or over examples: equal weights) gets the gradient of the whole batch.
  Gradients accumulate in float32 and are cast back to the parameters' gradient dtype.
  """
  grad_fn = jax.value_and_grad(loss_fn, has_aux=True)
  if steps == 1:
    return grad_fn(params, batch, rng)
  micro = _split_micro(batch, steps)
  abstract = jax.eval_shape(grad_fn, params, jax.tree.map(lambda x: x[0], micro), rng)
  (_, aux_shape), grad_shape = abstract
  zeros = lambda tree: jax.tree.map(lambda s: jnp.zeros(s.shape, jnp.float32), tree)

  def body(carry, xs):
    i, mb = xs
    mb = {k: constrain(v, ("batch",) + (None,) * (v.ndim - 1)) for k, v in mb.items()}
    (loss, aux), grads = grad_fn(params, mb, jax.random.fold_in(rng, i))
    w = _micro_weight(weight, mb, aux)
    acc_loss, acc_aux, acc_grads, acc_w = carry
    add = lambda acc, x: jax.tree.map(lambda a, b: a + w * b.astype(jnp.float32), acc, x)
    return (acc_loss + w * loss, add(acc_aux, aux), add(acc_grads, grads), acc_w + w), None

  init = (jnp.float32(0.0), zeros(aux_shape), zeros(grad_shape), jnp.float32(0.0))
  (loss, aux, grads, total), _ = jax.lax.scan(
      body, init, (jnp.arange(steps, dtype=jnp.uint32), micro))
  norm = jnp.where(total > 0, total, 1.0)
  mean = lambda tree, like: jax.tree.map(lambda a, s: (a / norm).astype(s.dtype), tree, like)
  aux = mean(aux, aux_shape)
  if isinstance(weight, str) and weight in aux:
    aux[weight] = total.astype(aux_shape[weight].dtype)
  return (loss / norm, aux), mean(grads, grad_shape)


def _update_fn(loss_fn: LossFn, optimizer: optax.GradientTransformation,
               grad_accum_steps: int = 1, accum_weight: AccumWeight = None) -> Callable:
  """The train step's math: ``update(state, batch, rng) -> (candidate, metrics)``.

  Folds the step number into ``rng``; ``metrics["finite"]`` says whether the loss and the
  gradients are finite. The callers decide whether the candidate replaces the state
  (``_keep_if``), so the single step and the scanned steps share one body. With
  ``grad_accum_steps`` > 1 the gradient is accumulated over micro-batches
  (``accumulated_value_and_grad``) and applied in one optimizer update.
  """
  if grad_accum_steps < 1:
    raise ValueError(f"grad_accum_steps must be >= 1, got {grad_accum_steps}")

  def update(state: TrainState, batch: dict, rng: jax.Array):
    rng = jax.random.fold_in(rng, state.step)
    (loss, aux), grads = accumulated_value_and_grad(loss_fn, state.params, batch, rng,
                                                    grad_accum_steps, accum_weight)
    updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    grad_norm = optax.tree.norm(grads)
    finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
    new = TrainState(step=state.step + 1, params=params, opt_state=opt_state)
    metrics = {"loss": loss, "grad_norm": grad_norm, "update_norm": optax.tree.norm(updates),
               "param_norm": optax.tree.norm(params), "finite": finite, **aux}
    return new, metrics

  return update


def _keep_if(apply: jax.Array, new: TrainState, old: TrainState) -> TrainState:
  """``new`` where ``apply`` (a bool scalar) holds, else ``old``, leaf by leaf."""
  return jax.tree.map(lambda n, o: jnp.where(apply, n, o), new, old)


def _jit(fn: Callable, state_sharding: TrainState | None, in_rest: tuple) -> Callable:
  """``fn(state, ...)`` jitted, donating the state (in ``state_sharding`` if given)."""
  if state_sharding is None:
    return jax.jit(fn, donate_argnums=0)
  return jax.jit(fn, in_shardings=(state_sharding, *in_rest),
                 out_shardings=(state_sharding, None), donate_argnums=0)


def make_train_step(loss_fn: LossFn, optimizer: optax.GradientTransformation, *,
                    state_sharding: TrainState | None = None,
                    batch_sharding: Any = None, grad_accum_steps: int = 1,
                    accum_weight: AccumWeight = None) -> Callable:
  """Builds ``step(state, batch, rng) -> (state, metrics)``, jitted and donating.

  Args:
    loss_fn: ``loss_fn(params, batch, rng) -> (loss, aux_metrics)``.
    optimizer: the optax transformation.
    state_sharding: TrainState of shardings (None: let jit decide, one device).
    batch_sharding: sharding(s) of the batch dict.
    grad_accum_steps, accum_weight: gradient accumulation over that many micro-batches
      of each batch, weighted as ``accumulated_value_and_grad`` says (1: none).

  The step folds the step number into ``rng``, so a resumed run draws the same
  randomness as an uninterrupted one. If the loss or gradients are not finite the
  update is not applied (the returned state equals the input) and
  ``metrics["finite"]`` is False; the caller stops the run.
  """
  update = _update_fn(loss_fn, optimizer, grad_accum_steps, accum_weight)

  def step(state: TrainState, batch: dict, rng: jax.Array):
    new, metrics = update(state, batch, rng)
    return _keep_if(metrics["finite"], new, state), metrics

  return _jit(step, state_sharding, (batch_sharding, None))


def make_train_epochs(loss_fn: LossFn, optimizer: optax.GradientTransformation, *,
                      state_sharding: TrainState | None = None, grad_accum_steps: int = 1,
                      accum_weight: AccumWeight = None) -> Callable:
  """Builds ``run(state, data, index, rng) -> (state, metrics)``: ``make_train_step``'s
  step applied once per row of ``index``, all in one jitted ``lax.scan`` (donating).

  Args:
    loss_fn, optimizer, state_sharding, grad_accum_steps, accum_weight: as for
      ``make_train_step``.

  ``data`` is a dict of device arrays with a leading example axis; ``index`` [steps,
  batch_size] int32 holds each step's example rows: step ``i`` gathers ``data[k][index[i]]``
  on device and constrains it to the logical ``batch`` axis (``sharding.constrain``: a
  no-op without a mesh context), so the host transfers nothing per step. ``metrics`` are
  the step metrics stacked on a leading [steps] axis (one host read for all of them).

  Once a step's loss or gradients are not finite, that step and every later one is not
  applied: the returned state is the state after the last good step before it, and
  ``metrics["finite"]`` is False from that step on (the first False names the bad step).
  """
  update = _update_fn(loss_fn, optimizer, grad_accum_steps, accum_weight)

  def run(state: TrainState, data: dict, index: jax.Array, rng: jax.Array):
    def body(carry, rows):
      state, ok = carry
      batch = {k: constrain(v[rows], ("batch",) + (None,) * (v.ndim - 1))
               for k, v in data.items()}
      new, metrics = update(state, batch, rng)
      ok = ok & metrics["finite"]
      return (_keep_if(ok, new, state), ok), {**metrics, "finite": ok}

    (state, _), metrics = jax.lax.scan(body, (state, jnp.bool_(True)), index)
    return state, metrics

  return _jit(run, state_sharding, (None, None, None))
