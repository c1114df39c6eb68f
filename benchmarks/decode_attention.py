"""Decode-step cost of the two attention forms (``CAI_JAX_DECODE_ATTENTION``) on the toy
SL-CAI shape: the model of ``gin_configs/models/toy_s.gin`` (random weights), 128 rows of a 512-slot row cache
(``sampling.rows``), 64 greedy steps in one jitted loop, at three live lengths.

  CAI_JAX_DECODE_ATTENTION=reduce .venv/bin/python benchmarks/decode_attention.py
  CAI_JAX_DECODE_ATTENTION=dot .venv/bin/python benchmarks/decode_attention.py

Prints ms per step (median of 5 timed calls after one compiling call). The choice is read
when the program is traced, so run one process per form.
"""
from __future__ import annotations

import functools
import os
import time

os.environ.setdefault("JAX_PLATFORMS", "cpu")

import gin  # noqa: E402
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from flax import nnx  # noqa: E402

from cai_jax import gin_setup  # noqa: E402
from cai_jax.models import api  # noqa: E402
from cai_jax.models.layers import decode_attention  # noqa: E402
from cai_jax.sampling import rows  # noqa: E402
from cai_jax.sampling.select import Mode  # noqa: E402

STEPS = 64


def main(batch: int = 128, slots: int = 512) -> None:
  gin_setup.parse(["models/toy_s.gin"])
  cfg = gin.get_configurable("ModelConfig")()   # the gin file's toy_s fields
  graphdef, params = api.split(api.build(cfg))

  @functools.partial(jax.jit, static_argnames=("attend_len",), donate_argnums=(1,))
  def steps(params, c, *, attend_len):
    model = nnx.merge(graphdef, params)
    stops = jnp.full((4,), -1, jnp.int32)
    c = c._replace(count_b=jnp.zeros_like(c.count_b))
    return jax.lax.fori_loop(0, STEPS, lambda i, c: rows._step(  # pylint: disable=protected-access
        model, c, jnp.float32(0), jnp.float32(1), stops, Mode(), attend_len), c)

  def carry_at(live):
    c = rows.empty(cfg=cfg, batch=batch, cache_len=slots, num_out=128)
    rng = np.random.default_rng(0)
    cache = [{n: jnp.asarray(rng.normal(size=x.shape).astype(np.float32)) for n, x in l.items()}
             for l in c.cache]
    return c._replace(len_b=jnp.asarray(rng.integers(live, live + 40, batch), jnp.int32),
                      active_b=jnp.ones((batch,), bool),
                      budget_b=jnp.full((batch,), 10_000, jnp.int32), cache=cache)

  print(f"decode attention: {decode_attention()}; batch {batch}, {slots} slots; {cfg}")
  for live, attend in ((60, 128), (150, 256), (300, 512)):
    c = jax.block_until_ready(steps(params, carry_at(live), attend_len=attend))
    times = []
    for _ in range(5):
      c = c._replace(len_b=c.len_b - STEPS)
      t = time.perf_counter()
      c = jax.block_until_ready(steps(params, c, attend_len=attend))
      times.append(time.perf_counter() - t)
    print(f"live {live}-{live + 40 + STEPS}, attend {attend}: "
          f"{np.median(times) / STEPS * 1e3:.2f} ms/step", flush=True)


if __name__ == "__main__":
  main()
