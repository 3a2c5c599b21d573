"""``recwatch update retrain|deploy|promote|rollback MODEL``: closed-loop commands by hand, on
``recwatch.model-updates.v1`` (key: the model), as the rules and the trainer publish them."""

from __future__ import annotations

import time
import uuid
from typing import Final

from schemas import ModelUpdate

COMMANDS: Final = {
    "retrain": ModelUpdate.RETRAIN_REQUESTED,
    "deploy": ModelUpdate.DEPLOY_REQUESTED,
    "promote": ModelUpdate.PROMOTE_REQUESTED,
    "rollback": ModelUpdate.ROLLBACK_REQUESTED,
}


def command(
    action: str, model: str, *, version: int = 0, reason: str = "", actor: str = "", now_us: int | None = None
) -> ModelUpdate:
    """The command message; raises ValueError for an unknown action, a missing model, or a deploy without a
    version (which version to canary is the point of a deploy)."""
    kind = COMMANDS.get(action)
    if kind is None:
        raise ValueError(f"unknown action {action!r}; one of: {', '.join(COMMANDS)}")
    if not model:
        raise ValueError("a model name is required")
    if kind == ModelUpdate.DEPLOY_REQUESTED and version <= 0:
        raise ValueError("deploy needs --version (the version to roll out as canary)")
    return ModelUpdate(
        update_id=uuid.uuid4().hex,
        ts_us=time.time_ns() // 1000 if now_us is None else now_us,
        model=model,
        kind=kind,
        version=version,
        reason=reason or f"{action} requested by hand",
        actor=actor or "person",
    )
