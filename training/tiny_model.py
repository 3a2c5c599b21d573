"""A tiny deterministic CTR-style ranker, exported as a SavedModel for tests and demos.

``scores = sigmoid(<user_emb[user_id % B], item_emb[item_id % B]> + mlp(features) + bias)`` with hashed
embeddings of ``B = 1009`` buckets x 8 and an 8-16-1 ReLU MLP; weights come from ``numpy``'s generator seeded
with ``seed``, so the same seed gives the same scores. The signature ``serving_default`` takes ``user_id``
(int64 [None]), ``item_id`` (int64 [None]) and ``features`` (float32 [None, 8]) and returns ``scores``
(float32 [None]). Rows pair up: ``user_id`` may also have a single value broadcast over the items.

Command line::

    python -m training.tiny_model /tmp/models            # writes /tmp/models/ranker/1/
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import numpy as np

BUCKETS = 1009
EMBEDDING_DIM = 8
NUM_FEATURES = 8
HIDDEN = 16


def export_tiny_ranker(base_path: Path, *, model_name: str = "ranker", version: int = 1, seed: int = 0) -> Path:
    """Write the model to ``<base_path>/<model_name>/<version>/`` and return that version directory.

    The SavedModel is written to a hidden sibling directory and renamed into place, so a server watching
    ``<base_path>/<model_name>`` never sees a half-written version. Raises FileExistsError if the version
    exists.
    """
    if version < 0:
        raise ValueError(f"version must be >= 0, got {version}")
    import tensorflow as tf

    from training.export import version_dir, write_version

    target = version_dir(base_path, model_name, version)
    if target.exists():
        raise FileExistsError(f"{target} already exists")
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

    class TinyRanker(tf.Module):  # type: ignore[misc]  # tf.Module is untyped
        def __init__(self) -> None:
            super().__init__(name="tiny_ranker")
            self.user_embedding = var((BUCKETS, EMBEDDING_DIM), 0.3, "user_embedding")
            self.item_embedding = var((BUCKETS, EMBEDDING_DIM), 0.3, "item_embedding")
            self.w1 = var((NUM_FEATURES, HIDDEN), 0.5, "w1")
            self.b1 = var((HIDDEN,), 0.1, "b1")
            self.w2 = var((HIDDEN,), 0.5, "w2")
            self.bias = tf.Variable(np.float32(-1.0), name="bias", trainable=False)

        @tf.function(  # type: ignore[untyped-decorator]
            input_signature=[
                tf.TensorSpec([None], tf.int64, name="user_id"),
                tf.TensorSpec([None], tf.int64, name="item_id"),
                tf.TensorSpec([None, NUM_FEATURES], tf.float32, name="features"),
            ]
        )
        def serve(self, user_id: Any, item_id: Any, features: Any) -> dict[str, Any]:
            user = tf.gather(self.user_embedding, tf.math.floormod(user_id, BUCKETS))
            item = tf.gather(self.item_embedding, tf.math.floormod(item_id, BUCKETS))
            interaction = tf.reduce_sum(user * item, axis=-1)
            hidden = tf.nn.relu(tf.matmul(features, self.w1) + self.b1)
            mlp = tf.linalg.matvec(hidden, self.w2)
            return {"scores": tf.sigmoid(interaction + mlp + self.bias)}

    return TinyRanker()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m training.tiny_model", description="Export the tiny deterministic ranker as a SavedModel."
    )
    parser.add_argument("base_path", type=Path, help="model repository root; writes BASE_PATH/NAME/VERSION/")
    parser.add_argument("--model-name", default="ranker")
    parser.add_argument("--version", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    try:
        path = export_tiny_ranker(args.base_path, model_name=args.model_name, version=args.version, seed=args.seed)
    except (FileExistsError, ValueError) as exc:
        print(f"tiny_model: {exc}", file=sys.stderr)
        return 1
    print(path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
