"""Memory plan of one PPO step at real sizes (issue 14): per-device bytes on 8 devices.

For the Llama-3.2-1B and Llama-3.1-8B shapes and several (data, fsdp, tensor) meshes of 8
devices, counts what one PPO iteration holds per device, from the shapes and the
shardings the code itself uses (``models.param_shardings``: the one rules table;
``train.state.state_shardings``: optimizer moments follow their parameters;
``sampling.cache.CACHE_AXES``: the rollout's KV cache), without allocating anything
(``jax.eval_shape``):

* resident all iteration: the policy and value parameters and their AdamW state (the
  project's ``make_optimizer``; optax keeps ``mu``/``nu`` in the parameters' dtype), the
  frozen reference (the policy's shape) and preference model (the value model's shape);
* rollout phase: the KV cache of ``rollout x rollout_len`` tokens;
* learn phase: the gradients (the parameters' shape and sharding) and the activations of
  one minibatch's forward and backward (policy and value model), an analytic estimate
  (``activation_bytes``) with and without ``remat='full'``.

Peak = resident + max(rollout phase, learn phase). The value model and the PM are taken
to be the policy's size (the usual setup; a smaller PM only lowers the numbers).

With ``--compiled`` it also compiles (never runs) the real PPO train step
(``state.make_train_step`` of ``rl.ppo.ppo_loss_fn``) at a reduced shape and prints XLA's
per-device memory analysis next to the analytic count, as a cross-check.

  python benchmarks/memory_plan.py [--compiled] [--markdown docs/MEMORY.md]
"""
from __future__ import annotations

import argparse
import dataclasses
import math
import os
import platform
import sys
import time

if "jax" not in sys.modules:   # 8 fake CPU devices; tests set this up themselves
  os.environ.setdefault("JAX_PLATFORMS", "cpu")
  if "xla_force_host_platform_device_count" not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "")
                               + " --xla_force_host_platform_device_count=8").strip()
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import numpy as np  # noqa: E402

from cai_jax import models  # noqa: E402
from cai_jax.sampling.cache import CACHE_AXES  # noqa: E402
from cai_jax.sharding import make_mesh  # noqa: E402
from cai_jax.sharding.rules import named_sharding  # noqa: E402
from cai_jax.train import state as state_lib  # noqa: E402
from cai_jax.train.optim import make_optimizer  # noqa: E402

GB = 1e9
MESHES = {"data8": (8, 1, 1), "fsdp8": (1, 8, 1), "fsdp4_tensor2": (1, 4, 2),
          "fsdp2_tensor4": (1, 2, 4)}
DEVICE_GB = (16, 32, 80, 141)


def model_configs() -> dict[str, models.ModelConfig]:
  """The two real shapes (bf16 parameters and activations)."""
  common = dict(vocab_size=128256, n_kv_heads=8, rope_theta=500000.0, max_seq_len=8192,
                param_dtype="bfloat16", dtype="bfloat16")
  return {
      "llama-3.2-1b": models.ModelConfig(d_model=2048, n_layers=16, n_heads=32, d_ff=8192,
                                         tie_embeddings=True, **common),
      "llama-3.1-8b": models.ModelConfig(d_model=4096, n_layers=32, n_heads=32, d_ff=14336,
                                         **common),
  }


def shard_bytes(shapes, shardings) -> int:
  """Bytes one device holds of a tree of ShapeDtypeStructs under a tree of shardings."""
  total = 0
  for s, sh in zip(jax.tree.leaves(shapes), jax.tree.leaves(shardings)):
    total += math.prod(sh.shard_shape(s.shape)) * np.dtype(s.dtype).itemsize
  return int(total)


def model_state_bytes(cfg: models.ModelConfig, mesh, kind: str) -> dict[str, int]:
  """Per-device bytes of a model's parameters, its gradients and its AdamW state."""
  _, shapes, _ = models.abstract(cfg, kind)
  shardings = models.param_shardings(cfg, mesh, kind)
  tx, _ = make_optimizer(total_steps=1)
  opt_shapes = jax.eval_shape(tx.init, shapes)
  opt_shardings = state_lib.state_shardings(mesh, shardings, shapes, tx).opt_state
  params = shard_bytes(shapes, shardings)
  return {"params": params, "grads": params, "opt": shard_bytes(opt_shapes, opt_shardings)}


def kv_cache_bytes(cfg: models.ModelConfig, mesh, batch: int, length: int) -> int:
  """Per-device bytes of the sampler's KV cache: k and v [batch, length, m, k] per layer."""
  shape = (batch, length, cfg.n_kv_heads, cfg.head_dim)
  shard = named_sharding(mesh, CACHE_AXES, shape).shard_shape(shape)
  return 2 * cfg.n_layers * math.prod(shard) * np.dtype(cfg.jnp_dtype).itemsize


def activation_bytes(cfg: models.ModelConfig, mesh, rows: int, length: int, remat: str,
                     lm_head: bool = True) -> int:
  """Estimated per-device activation bytes of one model's forward+backward on ``rows x
  length`` tokens (rows split over data x fsdp; heads, MLP and vocabulary over tensor).

  Per layer and token the backward keeps (compute dtype ``c`` bytes): the norm inputs and
  outputs and residuals (6 d), q/k/v before and after RoPE and the attention output
  (3 n k + 4 m k), the MLP's gate, up, activation and product (4 f), and the attention
  scores, softmax (float32) and probabilities (n s (8 + c)). With ``remat='full'`` a
  layer keeps only its input (d) and one layer's set is live while it is recomputed. The
  LM head adds float32 logits, log-softmax and probabilities (3 x 4 V) per token.
  """
  c = np.dtype(cfg.jnp_dtype).itemsize
  tokens = rows * length / (mesh.shape["data"] * mesh.shape["fsdp"])
  tp = mesh.shape["tensor"]
  d, f, n, m, k = cfg.d_model, cfg.d_ff, cfg.n_heads, cfg.n_kv_heads, cfg.head_dim
  layer = c * (6 * d + (3 * n * k + 4 * m * k + 4 * f) / tp) + n * length * (8 + c) / tp
  if remat == "none":
    body = cfg.n_layers * layer
  elif remat == "full":
    body = cfg.n_layers * c * d + layer
  else:
    raise ValueError(f"no analytic estimate for remat={remat!r}")
  head = 3 * 4 * cfg.vocab_size / tp if lm_head else 0
  return int(tokens * (body + head))


@dataclasses.dataclass(frozen=True)
class Plan:
  model: str
  mesh: str
  remat: str
  parts: dict[str, int]

  @property
  def resident(self) -> int:
    p = self.parts
    return sum(p[k] for k in ("policy_params", "policy_opt", "value_params", "value_opt",
                              "reference_params", "pm_params"))

  @property
  def learn(self) -> int:
    p = self.parts
    return p["policy_grads"] + p["value_grads"] + p["activations"]

  @property
  def peak(self) -> int:
    return self.resident + max(self.parts["kv_cache"], self.learn)


def ppo_plan(name: str, cfg: models.ModelConfig, mesh_name: str, mesh, *, remat: str,
             rollout: int = 64, rollout_len: int = 1024, minibatch: int = 16) -> Plan:
  """The per-device bytes of one PPO iteration (see the module docstring)."""
  pol, val = model_state_bytes(cfg, mesh, "lm"), model_state_bytes(cfg, mesh, "scalar")
  parts = {"policy_params": pol["params"], "policy_opt": pol["opt"],
           "policy_grads": pol["grads"], "value_params": val["params"],
           "value_opt": val["opt"], "value_grads": val["grads"],
           "reference_params": pol["params"], "pm_params": val["params"],
           "kv_cache": kv_cache_bytes(cfg, mesh, rollout, rollout_len),
           "activations": activation_bytes(cfg, mesh, minibatch, rollout_len, remat)
           + activation_bytes(cfg, mesh, minibatch, rollout_len, remat, lm_head=False)}
  return Plan(name, mesh_name, remat, parts)


def compiled_ppo_step(cfg: models.ModelConfig, mesh, rows: int, length: int,
                      remat: str = "none"):
  """XLA's per-device memory analysis of the real PPO train step (compiled, not run)."""
  from cai_jax.rl.ppo import ppo_loss_fn   # pylint: disable=import-outside-toplevel
  from cai_jax.train import trainer        # pylint: disable=import-outside-toplevel
  run_cfg = dataclasses.replace(cfg, remat=remat)
  roles = {"policy": "lm", "value": "scalar"}
  graphdefs = {r: models.abstract(run_cfg, k)[0] for r, k in roles.items()}
  tx, _ = make_optimizer(total_steps=1)
  layout = trainer.state_layout(mesh, {r: models.abstract(cfg, k)[1] for r, k in roles.items()},
                                {r: models.param_shardings(cfg, mesh, k)
                                 for r, k in roles.items()}, tx)
  batch_sh = named_sharding(mesh, ("batch", None))
  f32 = lambda: jax.ShapeDtypeStruct((rows, length - 1), np.float32, sharding=batch_sh)  # noqa
  batch = {"tokens": jax.ShapeDtypeStruct((rows, length), np.int32, sharding=batch_sh),
           **{k: f32() for k in ("mask", "logp", "values", "advantages", "returns")}}
  step = state_lib.make_train_step(
      ppo_loss_fn(graphdefs, clip_eps=0.2, value_clip=0.2, vf_coef=0.5), tx,
      state_sharding=layout.shardings)
  with jax.set_mesh(mesh):
    compiled = step.lower(layout.target, batch, jax.eval_shape(jax.random.key, 0)).compile()
  return compiled.memory_analysis()


def plans(remats=("none", "full"), **kwargs) -> list[Plan]:
  out = []
  for name, cfg in model_configs().items():
    for mesh_name, shape in MESHES.items():
      mesh = make_mesh(*shape)
      out += [ppo_plan(name, cfg, mesh_name, mesh, remat=r, **kwargs) for r in remats]
  return out


def fits(plan: Plan) -> str:
  return " ".join(f"{g}" for g in DEVICE_GB if plan.peak <= g * GB) or "none"


def table(rows: list[Plan]) -> str:
  cols = ("model", "mesh", "remat", "policy+value params", "AdamW state", "grads",
          "ref+PM params", "KV cache", "activations", "peak", "fits (GB)")
  lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
  for r in rows:
    p = r.parts
    vals = [p["policy_params"] + p["value_params"], p["policy_opt"] + p["value_opt"],
            p["policy_grads"] + p["value_grads"], p["reference_params"] + p["pm_params"],
            p["kv_cache"], p["activations"], r.peak]
    lines.append("| " + " | ".join([r.model, r.mesh, r.remat]
                                   + [f"{v / GB:.2f}" for v in vals] + [fits(r)]) + " |")
  return "\n".join(lines)


def compiled_table(cases) -> str:
  """Compiled vs analytic at reduced shapes: arguments (= the train state) and temps."""
  lines = ["| shape | mesh | remat | compiled args | analytic state | compiled temp | "
           "analytic grads+activations | compile s |", "|" + "---|" * 8]
  for label, cfg, mesh_name, rows, length, remat in cases:
    mesh = make_mesh(*MESHES[mesh_name])
    t0 = time.perf_counter()
    ma = compiled_ppo_step(cfg, mesh, rows, length, remat)
    dt = time.perf_counter() - t0
    plan = ppo_plan(label, cfg, mesh_name, mesh, remat=remat, rollout=rows,
                    rollout_len=length, minibatch=rows)
    p = plan.parts
    state = p["policy_params"] + p["policy_opt"] + p["value_params"] + p["value_opt"]
    lines.append(f"| {label} | {mesh_name} | {remat} | {ma.argument_size_in_bytes / GB:.3f} | "
                 f"{state / GB:.3f} | {ma.temp_size_in_bytes / GB:.3f} | {plan.learn / GB:.3f}"
                 f" | {dt:.0f} |")
  return "\n".join(lines)


def reduced_cases():
  """Real widths, fewer layers, short rows: affordable CPU compiles."""
  cfgs = model_configs()
  one_b = dataclasses.replace(cfgs["llama-3.2-1b"], n_layers=2)
  eight_b = dataclasses.replace(cfgs["llama-3.1-8b"], n_layers=2)
  return [("1B width, 2 layers, 16x256", one_b, m, 16, 256, r)
          for m in ("fsdp8", "fsdp4_tensor2") for r in ("none", "full")] + [
      ("8B width, 2 layers, 16x256", eight_b, "fsdp4_tensor2", 16, 256, r)
      for r in ("none", "full")]


def main(argv=None) -> None:
  ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  ap.add_argument("--compiled", action="store_true")
  ap.add_argument("--markdown", default=None, help="also write the tables to this file")
  args = ap.parse_args(argv)
  out = [f"command: python benchmarks/memory_plan.py{' --compiled' if args.compiled else ''}",
         f"date: {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; machine: "
         f"{platform.machine()} {platform.system()}, {os.cpu_count()} CPUs, jax "
         f"{jax.__version__}, {len(jax.devices())} fake {jax.devices()[0].platform} devices",
         "", "Per-device GB (1e9 bytes) of one PPO iteration: rollout 64 x 1024 tokens, "
         "minibatch 16 x 1024.", "", table(plans())]
  if args.compiled:
    out += ["", "Compiled PPO train step (XLA memory analysis, per device) vs the analytic "
            "count:", "", compiled_table(reduced_cases())]
  text = "\n".join(out)
  print(text)
  if args.markdown:
    with open(args.markdown, "w", encoding="utf-8") as fh:
      fh.write(text + "\n")


if __name__ == "__main__":
  main()
