"""C, the controller of Ha & Schmidhuber, *World Models* (2018, arXiv:1803.10122), and its
training by CMA-ES (Hansen 2016, arXiv:1604.00772) in the real environment.

* :class:`Controller`: the linear map ``a = W [z, h] + b`` from V's latent and M's hidden state
  to a CarRacing action (867 parameters at z=32, h=256), with the original's action mapping
  (:func:`map_action`), the paper's ablations (z only, one hidden layer) and flat parameter
  vectors for CMA-ES (``get_flat`` / ``set_flat`` / ``from_flat``).
* :class:`WorldModelAgent` (:mod:`~worldmodels.control.agent`): V + M + C turning raw frames
  into actions for many environments at once, M's state carried step to step.
* :mod:`~worldmodels.control.evaluation`: real episodes in lockstep (what workers run).
* :mod:`~worldmodels.control.dream_fitness`: candidates x trials in M's dream at once.
* :mod:`~worldmodels.control.es_state`: the CMA-ES state as plain tensors (no pickle).

Loading them from a run is :mod:`worldmodels.run`'s; the training stage is
:mod:`worldmodels.stages.train_controller`.
"""

from worldmodels.control.agent import WorldModelAgent
from worldmodels.control.controller import ACTION_DIM, Controller, map_action

__all__ = [
    "Controller",
    "map_action",
    "ACTION_DIM",
    "WorldModelAgent",
]
