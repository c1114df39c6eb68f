"""The logical-axis rules table and mesh construction on 8 fake CPU devices."""
import jax
import pytest
from jax.sharding import AxisType, PartitionSpec as P

from cai_jax import models
from cai_jax.sharding import RULES, logical_to_spec, make_mesh, named_sharding

CFG = models.ModelConfig(vocab_size=128, d_model=32, n_layers=2, n_heads=8, n_kv_heads=4,
                         d_ff=64)


def test_make_mesh_fills_minus_one_and_is_auto(n_devices):
  mesh = make_mesh(-1, 2, 2)
  assert dict(mesh.shape) == {"data": 2, "fsdp": 2, "tensor": 2}
  assert all(t == AxisType.Auto for t in mesh.axis_types)
  assert dict(make_mesh().shape) == {"data": 8, "fsdp": 1, "tensor": 1}


@pytest.mark.parametrize("shape", [(3, 3, 1), (4, 4, 1), (-1, -1, 1), (0, 8, 1), (-1, 3, 1)])
def test_make_mesh_rejects_bad_shapes(shape, n_devices):
  with pytest.raises(ValueError):
    make_mesh(*shape)


def test_unknown_logical_name_raises():
  with pytest.raises(KeyError, match="no sharding rule"):
    logical_to_spec(("batch", "not_a_real_axis"))


def test_same_mesh_axis_twice_raises():
  with pytest.raises(ValueError, match="twice"):
    logical_to_spec(("embed", "embed"))


def test_every_rule_resolves():
  for name in RULES:
    logical_to_spec((name,))


def test_indivisible_dimension_has_clear_error(n_devices):
  mesh = make_mesh(1, 1, 8)
  with pytest.raises(ValueError, match="not divisible"):
    named_sharding(mesh, ("embed", "kv_heads", "kv"), (32, 4, 4))


# Every parameter kind of the LM and the scalar-head model, pinned on a 2x2x2 mesh.
EXPECTED = {
    ("embed_vd",): P("tensor", "fsdp"),
    ("lm_head_dv",): P("fsdp", "tensor"),
    ("final_norm", "scale_d"): P("fsdp"),
    ("attn_norm", "scale_d"): P("fsdp"),
    ("mlp_norm", "scale_d"): P("fsdp"),
    ("attn", "wq_dnk"): P("fsdp", "tensor", None),
    ("attn", "wk_dmk"): P("fsdp", "tensor", None),
    ("attn", "wv_dmk"): P("fsdp", "tensor", None),
    ("attn", "wo_nkd"): P("tensor", None, "fsdp"),
    ("mlp", "w_gate_df"): P("fsdp", "tensor"),
    ("mlp", "w_up_df"): P("fsdp", "tensor"),
    ("mlp", "w_down_fd"): P("tensor", "fsdp"),
    ("head_w_d",): P("fsdp"),
    ("head_b",): P(),
}


def _key(path):
  names = [str(getattr(k, "key", k)) for k in path]
  names = [n for n in names if not n.isdigit() and n not in ("layers", "backbone")]
  return tuple(names)


@pytest.mark.parametrize("kind", ["lm", "scalar"])
def test_pinned_partition_specs(kind, n_devices):
  mesh = make_mesh(2, 2, 2)
  shardings = models.param_shardings(CFG, mesh, kind)
  seen = set()
  for path, sh in jax.tree_util.tree_flatten_with_path(shardings)[0]:
    key = _key(path)
    assert key in EXPECTED, f"unpinned parameter kind {key}"
    assert sh.spec == EXPECTED[key], (key, sh.spec)
    seen.add(key)
  if kind == "lm":
    assert seen == set(EXPECTED) - {("head_w_d",), ("head_b",)}
  else:
    assert ("head_w_d",) in seen and ("lm_head_dv",) not in seen


def test_init_is_sharded_without_full_copy(n_devices):
  mesh = make_mesh(1, 2, 4)
  _, params = models.init(CFG, mesh=mesh)
  wq = params["layers"][0]["attn"]["wq_dnk"]
  assert wq.sharding.spec == P("fsdp", "tensor", None)
  # each device holds 1/8 of the array
  assert wq.addressable_shards[0].data.size == wq.size // 8
