"""A DCN-v2-style CTR ranker (Wang et al., 2021) in Keras, exported as a SavedModel.

Raw ids are hashed (``id mod buckets``, prime bucket counts) into 8-wide user, item and category embeddings;
with the two popularity features of :mod:`training.features` they form ``x0``, which goes through two
full-rank cross layers ``x_{l+1} = x0 * (W x_l + b) + x_l`` and, in parallel, a 64-32 ReLU MLP; a logistic
layer on both gives the probability.

Serving signature ``serving_default`` (the popularity features are looked up inside the model):

=============== ======= ====== ==================================================================
name            dtype   shape  meaning
=============== ======= ====== ==================================================================
``user_id``     int64   [None] raw Taobao user id; a single value is broadcast over the items
``item_id``     int64   [None] raw Taobao item id of each candidate
``category_id`` int64   [None] raw Taobao category id of each candidate
``scores``      float32 [None] output: probability that the user interacts with the item
=============== ======= ====== ==================================================================

Training samples come from :func:`training.samples.ctr_samples` (interactions vs sampled negatives) over the
second half of the training period; the popularity features count the first half (see :mod:`training.features`).
This module imports Keras (and so TensorFlow) when imported; the data modules and the CLI do not.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import keras
import numpy as np

from training.features import NUM_FEATURES, CountFeatures
from training.samples import CtrSamples

ID_INPUTS = ("user_id", "item_id", "category_id")


@dataclass(frozen=True)
class CtrConfig:
    user_buckets: int = 131_071
    item_buckets: int = 262_139
    category_buckets: int = 10_007
    embedding_dim: int = 8
    cross_layers: int = 2
    deep_units: tuple[int, ...] = (64, 32)
    negatives: int = 4  # sampled negatives per positive
    epochs: int = 3
    batch_size: int = 2048
    learning_rate: float = 2e-3
    embedding_l2: float = 3e-4  # most ids occur once; without it new users' hashed embeddings are noise


class Cross(keras.layers.Layer):  # type: ignore[misc]  # keras is untyped
    """``x0 * (W x + b) + x``: one DCN-v2 cross layer with a full-rank W."""

    def build(self, input_shape: Any) -> None:
        dim = int(input_shape[0][-1])
        self.dense = keras.layers.Dense(dim)
        self.dense.build((None, dim))

    def call(self, inputs: Any) -> Any:
        x0, x = inputs
        return x0 * self.dense(x) + x


def build_ctr_model(config: CtrConfig, *, seed: int) -> Any:
    """The Keras model: ``user_id``, ``item_id``, ``category_id`` (int64 [B]) and ``counts`` (float32 [B, 2])
    -> probability [B]."""
    keras.utils.set_random_seed(seed)
    ids = {name: keras.Input(shape=(), dtype="int64", name=name) for name in ID_INPUTS}
    counts = keras.Input(shape=(NUM_FEATURES,), dtype="float32", name="counts")
    buckets = dict(zip(ID_INPUTS, (config.user_buckets, config.item_buckets, config.category_buckets), strict=True))
    parts = []
    for name, tensor in ids.items():
        layer = keras.layers.Embedding(
            buckets[name],
            config.embedding_dim,
            embeddings_regularizer=keras.regularizers.L2(config.embedding_l2),
            name=f"{name.removesuffix('_id')}_embedding",
        )
        parts.append(layer(keras.ops.mod(tensor, buckets[name])))
    parts.append(counts)
    x0 = keras.layers.Concatenate()(parts)
    cross = x0
    for i in range(config.cross_layers):
        cross = Cross(name=f"cross_{i}")([x0, cross])
    deep = x0
    for units in config.deep_units:
        deep = keras.layers.Dense(units, activation="relu")(deep)
    # Start at the prior odds of the 1 : negatives mix: from 0.5, the first steps would push down every item that
    # is ever drawn as a negative (each is drawn about `negatives` times as often as it is a positive).
    prior = keras.initializers.Constant(-np.log(max(1, config.negatives)))
    logit = keras.layers.Dense(1, bias_initializer=prior)(keras.layers.Concatenate()([cross, deep]))
    prob = keras.layers.Reshape(())(keras.layers.Activation("sigmoid")(logit))
    model = keras.Model(inputs=[*ids.values(), counts], outputs=prob, name="dcn_v2")
    model.compile(
        optimizer=keras.optimizers.Adam(config.learning_rate),
        loss=keras.losses.BinaryCrossentropy(),
        metrics=[keras.metrics.AUC(name="auc")],
    )
    return model


def fit_ctr(
    model: Any,
    samples: CtrSamples,
    features: CountFeatures,
    config: CtrConfig,
    *,
    verbose: int | str = "auto",
    callbacks: Sequence[Any] = (),
) -> Any:
    """Train ``model`` on ``samples`` for ``config.epochs``; ``features`` must come from a log before the
    samples' (see :mod:`training.features`). ``callbacks`` are Keras callbacks. Returns Keras's History."""
    return model.fit(
        {
            "user_id": samples.user,
            "item_id": samples.item,
            "category_id": samples.category,
            "counts": features.values(samples.item, samples.category),
        },
        samples.label,
        batch_size=config.batch_size,
        epochs=config.epochs,
        shuffle=True,
        verbose=verbose,
        callbacks=list(callbacks),
    )


def export_ctr(model: Any, features: CountFeatures, directory: Path) -> None:
    """Write ``model`` as a SavedModel with the ``serving_default`` signature documented above; the values of
    ``features`` (counted over the whole training log) become lookup tables inside it."""
    import tensorflow as tf

    def table(keys: Any, values: Any) -> Any:
        init = tf.lookup.KeyValueTensorInitializer(tf.constant(keys, tf.int64), tf.constant(values, tf.float32))
        return tf.lookup.StaticHashTable(init, default_value=0.0)

    class CtrServing(tf.Module):  # type: ignore[misc]  # tf.Module is untyped
        def __init__(self) -> None:
            super().__init__(name="ctr")
            self.model = model
            self.item_counts = table(features.item_ids, features.item_values)
            self.category_counts = table(features.category_ids, features.category_values)

        @tf.function(  # type: ignore[untyped-decorator]
            input_signature=[tf.TensorSpec([None], tf.int64, name=name) for name in ID_INPUTS]
        )
        def serve(self, user_id: Any, item_id: Any, category_id: Any) -> dict[str, Any]:
            user_id = tf.cond(
                tf.equal(tf.size(user_id), 1), lambda: tf.fill(tf.shape(item_id), user_id[0]), lambda: user_id
            )
            counts = tf.stack([self.item_counts.lookup(item_id), self.category_counts.lookup(category_id)], axis=1)
            scores = self.model([user_id, item_id, category_id, counts], training=False)
            return {"scores": tf.reshape(tf.cast(scores, tf.float32), [-1])}

    module = CtrServing()
    tf.saved_model.save(module, str(directory), signatures={"serving_default": module.serve})
