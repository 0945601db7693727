import os


# Several CPU devices, so that code sharded over devices runs in the tests too. This
# must be set before JAX initialises its backend.
os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=4")

import jax


jax.config.update("jax_enable_x64", True)
jax.config.update("jax_numpy_dtype_promotion", "strict")
jax.config.update("jax_numpy_rank_promotion", "raise")


import pytest


@pytest.fixture(autouse=True, scope="module")
def _clear_jax_caches():
    # One process compiles thousands of programs over the suite; freeing them after
    # each test module keeps XLA's CPU code memory bounded. Without this, a compile
    # late in the suite aborted the process on a 2-core, 24 GiB machine.
    yield
    jax.clear_caches()
