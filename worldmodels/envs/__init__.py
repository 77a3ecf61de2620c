"""Environments: the exact fast CarRacing, frame preprocessing and M's dream.

Importing this package registers ``worldmodels/FastCarRacing-v3`` with gymnasium (same
time limit and reward threshold as ``CarRacing-v3``) and ``worldmodels/Dream-v0``
(:class:`~worldmodels.envs.dream_env.DreamEnv`, built from a run by
:func:`worldmodels.run.make_dream_env`). Gymnasium 1.x loads no plugins, so a program
that has imported only ``gymnasium`` names this module in the id, and gymnasium imports it
first::

    gymnasium.make("worldmodels.envs:worldmodels/Dream-v0", run=DIR, temperature=1.0,
                   render_mode=...)
    gymnasium.make("worldmodels.envs:worldmodels/FastCarRacing-v3")

(after ``import worldmodels.envs`` the bare ids work too). The dream needs torch: it is imported on
first use (``worldmodels.envs.DreamEnv``, ``BatchedDream``), so
that importing this package, as collection workers do, does not import torch.
"""

from gymnasium.envs.registration import register, registry

from worldmodels.envs.car_racing import FastCarRacing
from worldmodels.envs.preprocess import FRAME_SIZE, preprocess_frame, preprocess_frames

FAST_ENV_ID = "worldmodels/FastCarRacing-v3"
STOCK_ENV_ID = "CarRacing-v3"
DREAM_ENV_ID = "worldmodels/Dream-v0"

if FAST_ENV_ID not in registry:
    register(
        id=FAST_ENV_ID,
        entry_point="worldmodels.envs.car_racing:FastCarRacing",
        max_episode_steps=1000,
        reward_threshold=900,
    )
if DREAM_ENV_ID not in registry:
    # No TimeLimit wrapper: the dream truncates itself (max_steps, default 1000), as the
    # batched dream must.
    register(id=DREAM_ENV_ID, entry_point="worldmodels.run:make_dream_env")

_LAZY = {"DreamEnv": "dream_env", "BatchedDream": "dream", "BatchedCodeDream": "code_dream"}


def __getattr__(name: str):  # PEP 562: the dream (and torch) only when asked for
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(f"worldmodels.envs.{_LAZY[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "DREAM_ENV_ID",
    "FAST_ENV_ID",
    "FRAME_SIZE",
    "STOCK_ENV_ID",
    "BatchedCodeDream",
    "BatchedDream",
    "DreamEnv",
    "FastCarRacing",
    "preprocess_frame",
    "preprocess_frames",
]
