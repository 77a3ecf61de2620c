"""Data: exploration policies, rollout collection to HDF5, and datasets that read it."""

from worldmodels.data.rollouts import DATASET_NAME, FORMAT, FORMAT_VERSION, collect, open_rollouts

__all__ = ["DATASET_NAME", "FORMAT", "FORMAT_VERSION", "collect", "open_rollouts"]
