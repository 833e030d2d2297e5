"""Sphinx configuration: API reference from the docstrings, guides in
Markdown (MyST), result tables generated from benchmarks/results."""

import pathlib
import sys

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # the examples' record renderers

from docs import results  # noqa: E402

project = "optax_gsm"
author = "the optax_gsm authors"
copyright = "the optax_gsm authors"  # noqa: A001

extensions = [
    "myst_parser",
    "sphinx.ext.autodoc",
    "sphinx.ext.autosummary",
    "sphinx.ext.doctest",
    "sphinx.ext.mathjax",
    "sphinx.ext.napoleon",
    "sphinx.ext.viewcode",
]
source_suffix = {".md": "markdown", ".rst": "restructuredtext"}
exclude_patterns = ["_build", "_generated"]
myst_enable_extensions = ["dollarmath"]
myst_heading_anchors = 3

autodoc_member_order = "bysource"
# The signatures' pytree and schedule aliases expand to unreadable unions;
# the Args sections say what each argument is.
autodoc_typehints = "none"
autodoc_default_options = {"exclude-members": "__new__, __init__"}
napoleon_google_docstring = True
napoleon_numpy_docstring = False
# Attributes as fields of their class: autodoc documents the members.
napoleon_use_ivar = True
# `name` in a docstring is code, not a cross-reference to resolve.
default_role = "code"

html_theme = "alabaster"
html_static_path = []

# What every page's examples start from: a small Flax MLP, a batch of
# random data and its loss.
doctest_global_setup = """
import os
os.environ.setdefault("JAX_PLATFORMS", "cpu")
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import optax_gsm

class Mlp(nn.Module):
  @nn.compact
  def __call__(self, x):
    x = nn.relu(nn.Dense(32)(x))
    x = nn.relu(nn.Dense(16)(x))
    return nn.Dense(4)(x)

model = Mlp()
_rng = np.random.default_rng(0)
x = jnp.asarray(_rng.normal(size=(64, 8)), jnp.float32)
y = jnp.asarray(_rng.integers(0, 4, size=64))
params = model.init(jax.random.PRNGKey(0), x)["params"]

def loss_fn(params, x, y):
  logits = model.apply({"params": params}, x)
  return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()
"""


def _write_results(app):
  results.write_pages(pathlib.Path(app.srcdir))


def setup(app):
  app.connect("builder-inited", _write_results)
