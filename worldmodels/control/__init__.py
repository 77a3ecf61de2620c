"""C, the controller of Ha & Schmidhuber, *World Models* (2018, arXiv:1803.10122).

* :class:`Controller`: the linear map ``a = W [z, h] + b`` from V's latent and M's hidden state
  to a CarRacing action (867 parameters at z=32, h=256), with the original's action mapping
  (:func:`map_action`), the paper's ablations (z only, one hidden layer) and flat parameter
  vectors for CMA-ES (``get_flat`` / ``set_flat`` / ``from_flat``).
"""

from worldmodels.control.controller import ACTION_DIM, Controller, map_action

__all__ = ["Controller", "map_action", "ACTION_DIM"]
