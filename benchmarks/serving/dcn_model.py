"""A ~2M-parameter DCN-style ranker (Wang et al., Deep & Cross Network) exported as the benchmark's SavedModel.

Same signature as ``training.tiny_model``: ``serving_default`` takes ``user_id`` (int64 [N]), ``item_id``
(int64 [N]) and ``features`` (float32 [N, 8]) and returns ``scores`` (float32 [N]). Ids are hashed into
embedding tables of 30,011 (users) and 32,003 (items) buckets x 32; ``x0 = [user_emb, item_emb, features]``
(72 wide) goes through 3 cross layers ``x_{l+1} = x0 * (x_l W_l + b_l) + x_l`` and, in parallel, a 256-128 ReLU
tower; both are concatenated into one logit. 2,052,001 parameters, ~67k multiply-adds per row: like real
ranking models of this size, a call costs far more in framework overhead than in arithmetic at 32 rows.
Weights come from ``numpy``'s generator seeded with ``seed``: the same seed gives the same scores.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

USER_BUCKETS = 30_011
ITEM_BUCKETS = 32_003
EMBEDDING_DIM = 32
NUM_FEATURES = 8
CROSS_LAYERS = 3
DEEP = (256, 128)
X0_DIM = 2 * EMBEDDING_DIM + NUM_FEATURES


def parameter_count() -> int:
    """Parameters of the exported model (embeddings + cross layers + tower + head)."""
    count = (USER_BUCKETS + ITEM_BUCKETS) * EMBEDDING_DIM
    count += CROSS_LAYERS * (X0_DIM * X0_DIM + X0_DIM)
    width = X0_DIM
    for units in DEEP:
        count += width * units + units
        width = units
    return count + (X0_DIM + width) + 1


def export_dcn_ranker(base_path: Path, *, model_name: str = "dcn", version: int = 1, seed: int = 0) -> Path:
    """Write the model to ``<base_path>/<model_name>/<version>/`` (atomically, via a renamed staging directory)
    and return that directory. An existing version is kept and returned as is, so repeated runs reuse it."""
    from training.export import version_dir, version_exists, write_version

    if version_exists(base_path, model_name, version):
        return version_dir(base_path, model_name, version)

    import tensorflow as tf

    module = _build(tf, np.random.default_rng(seed))
    return write_version(
        base_path,
        model_name,
        version,
        lambda staging: tf.saved_model.save(module, str(staging), signatures={"serving_default": module.serve}),
    )


def _build(tf: Any, rng: np.random.Generator) -> Any:
    def var(shape: tuple[int, ...], scale: float, name: str) -> Any:
        return tf.Variable(rng.normal(0.0, scale, shape).astype(np.float32), name=name, trainable=False)

    class DCNRanker(tf.Module):  # type: ignore[misc]  # tf.Module is untyped
        def __init__(self) -> None:
            super().__init__(name="dcn_ranker")
            self.user_embedding = var((USER_BUCKETS, EMBEDDING_DIM), 0.1, "user_embedding")
            self.item_embedding = var((ITEM_BUCKETS, EMBEDDING_DIM), 0.1, "item_embedding")
            self.cross_w = [var((X0_DIM, X0_DIM), 0.05, f"cross_w{i}") for i in range(CROSS_LAYERS)]
            self.cross_b = [var((X0_DIM,), 0.01, f"cross_b{i}") for i in range(CROSS_LAYERS)]
            self.deep_w, self.deep_b = [], []
            width = X0_DIM
            for i, units in enumerate(DEEP):
                self.deep_w.append(var((width, units), (2.0 / width) ** 0.5, f"deep_w{i}"))
                self.deep_b.append(var((units,), 0.01, f"deep_b{i}"))
                width = units
            self.head_w = var((X0_DIM + width,), 0.05, "head_w")
            self.head_b = tf.Variable(np.float32(-1.0), name="head_b", trainable=False)

        @tf.function(  # type: ignore[untyped-decorator]
            input_signature=[
                tf.TensorSpec([None], tf.int64, name="user_id"),
                tf.TensorSpec([None], tf.int64, name="item_id"),
                tf.TensorSpec([None, NUM_FEATURES], tf.float32, name="features"),
            ]
        )
        def serve(self, user_id: Any, item_id: Any, features: Any) -> dict[str, Any]:
            rows = tf.shape(item_id)[0]
            # A single user id is broadcast over the candidates, as in training.tiny_model.
            user_id = tf.broadcast_to(user_id, [rows])
            user = tf.gather(self.user_embedding, tf.math.floormod(user_id, USER_BUCKETS))
            item = tf.gather(self.item_embedding, tf.math.floormod(item_id, ITEM_BUCKETS))
            x0 = tf.concat([user, item, features], axis=1)
            x = x0
            for w, b in zip(self.cross_w, self.cross_b, strict=True):
                x = x0 * (tf.matmul(x, w) + b) + x
            h = x0
            for w, b in zip(self.deep_w, self.deep_b, strict=True):
                h = tf.nn.relu(tf.matmul(h, w) + b)
            logit = tf.linalg.matvec(tf.concat([x, h], axis=1), self.head_w) + self.head_b
            return {"scores": tf.sigmoid(logit)}

    return DCNRanker()
