"""cai_jax: Constitutional AI in JAX."""
