"""Shared test setup: 8 host devices for the sharded tests, x64 off."""

import os

# Must be set before JAX initialises its backends.
os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
