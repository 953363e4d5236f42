"""Deprecated: MM1's law is :func:`scaling.law.mm1_law`, its numbers are in :mod:`mm1model.paper`.

Kept only while ``scaling/recipe.py``, ``scaling/sweep.py`` and ``scaling/launch.py`` still
import it; delete this module once they import ``scaling.law.mm1_law`` and
``mm1model.paper.mm1_peak_lr`` instead. It defines nothing of its own.
"""
from __future__ import annotations

from mm1model.paper import MM1_LR_TABLE as MM1_TABLE  # noqa: F401
from mm1model.paper import MM1_SWEEP_PARAMS  # noqa: F401
from mm1model.paper import mm1_peak_lr as mm1_lr  # noqa: F401
from scaling.law import mm1_law  # noqa: F401
