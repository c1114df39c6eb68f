"""Meshes and the logical-axis sharding rules."""
from cai_jax.sharding.batch import batch_putter, check_batch_divides
from cai_jax.sharding.mesh import AXES, build_mesh, make_mesh, single_device_mesh
from cai_jax.sharding.rules import (RULES, constrain, logical_to_spec, named_sharding,
                                    tree_shardings)

__all__ = ["AXES", "RULES", "batch_putter", "build_mesh", "check_batch_divides", "constrain",
           "logical_to_spec", "make_mesh", "named_sharding", "single_device_mesh",
           "tree_shardings"]
