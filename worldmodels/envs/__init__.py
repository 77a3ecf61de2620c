"""Environments: the exact fast CarRacing and frame preprocessing.

Importing this package registers ``worldmodels/FastCarRacing-v3`` with gymnasium (same
time limit and reward threshold as ``CarRacing-v3``).
"""

from gymnasium.envs.registration import register, registry

from worldmodels.envs.car_racing import FastCarRacing
from worldmodels.envs.preprocess import FRAME_SIZE, preprocess_frame, preprocess_frames

FAST_ENV_ID = "worldmodels/FastCarRacing-v3"
STOCK_ENV_ID = "CarRacing-v3"

if FAST_ENV_ID not in registry:
    register(
        id=FAST_ENV_ID,
        entry_point="worldmodels.envs.car_racing:FastCarRacing",
        max_episode_steps=1000,
        reward_threshold=900,
    )

__all__ = [
    "FAST_ENV_ID",
    "FRAME_SIZE",
    "STOCK_ENV_ID",
    "FastCarRacing",
    "preprocess_frame",
    "preprocess_frames",
]
