"""softmcl_jax."""
