"""Data: exploration policies, the rollout and latent stores (HDF5), and datasets that read
them (collection itself is :mod:`worldmodels.stages.collect`)."""

from typing import Any

from worldmodels.data.rollouts import DATASET_NAME, FORMAT, FORMAT_VERSION, open_rollouts

# The datasets need torch; importing them lazily keeps collection workers (which import
# this package) free of torch's import time and memory.
_DATASET_NAMES = (
    "FrameDataset", "RolloutDataset", "fits_in_memory", "load_frames",
    "split_episodes",
)

__all__ = ["DATASET_NAME", "FORMAT", "FORMAT_VERSION", "open_rollouts", *_DATASET_NAMES]


def __getattr__(name: str) -> Any:
    if name in _DATASET_NAMES:
        from worldmodels.data import datasets, frames

        return getattr(frames if name in frames.__all__ else datasets, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
