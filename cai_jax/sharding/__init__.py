"""Meshes and the logical-axis sharding rules."""
from cai_jax.sharding.mesh import AXES, make_mesh, single_device_mesh
from cai_jax.sharding.rules import (RULES, constrain, logical_to_spec, named_sharding,
                                    tree_shardings)

__all__ = ["AXES", "RULES", "constrain", "logical_to_spec", "make_mesh", "named_sharding",
           "single_device_mesh", "tree_shardings"]
