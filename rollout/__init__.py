"""The closed loop's rollout: canary comparisons on live windows and the state machine that raises a canary's
weight, promotes it or rolls it back (``controller.py``), crash-safe by replaying ``recwatch.model-updates.v1``."""

from rollout.compare import ArmStats, ComparePolicy
from rollout.controller import Rollout, RolloutController, RolloutPolicy, replay

__all__ = ["ArmStats", "ComparePolicy", "Rollout", "RolloutController", "RolloutPolicy", "replay"]
