"""Gin-configurable programs, one module per phase (cai_jax.gin_setup imports them)."""
