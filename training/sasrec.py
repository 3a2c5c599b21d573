"""A SASRec-style sequential recommender (Kang & McAuley, 2018) in Keras, exported as a SavedModel.

An item is represented by the sum of its own embedding and its category's embedding (the category comes from
a table built from the training log), so the many items seen only once still carry their category. The
history (the last ``max_len`` items, oldest first) plus learned position embeddings goes through two pre-norm
Transformer blocks with causal self-attention; the output at the last position, dotted with a candidate's
representation, is the candidate's logit. Training follows SASRec: at every position the next item is the
positive and one item drawn uniformly from the vocabulary is the negative, with binary cross-entropy.

Serving signature ``serving_default``; the SavedModel holds the item vocabulary as a
``tf.lookup.StaticHashTable``, so clients send raw Taobao item ids (ids it does not know share one index):

============= ======= ============ ==============================================================
name          dtype   shape        meaning
============= ======= ============ ==============================================================
``history``   int64   [None, None] the user's item ids, oldest first, left-padded with 0; only the
                                   last ``max_len`` (20) are used, shorter ones are padded
``item_id``   int64   [None, None] candidate item ids per row
``scores``    float32 [None, None] output: sigmoid of each candidate's logit, same shape as item_id
============= ======= ============ ==============================================================

The candidates are called ``item_id`` (not ``candidates``) because the model server records that input's
values in every inference event, as it does for the CTR ranker. This module imports Keras when imported.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import keras
import numpy as np
import numpy.typing as npt

from training.samples import OOV, PAD, ItemVocab


@dataclass(frozen=True)
class SasrecConfig:
    max_len: int = 20
    dim: int = 32
    heads: int = 2
    blocks: int = 2
    dropout: float = 0.2
    item_l2: float = 1e-5
    oov_rate: float = 0.05  # share of history items replaced by the unknown index in training, so it is learned
    epochs: int = 8
    batch_size: int = 512
    learning_rate: float = 2e-3


class SasRec(keras.Model):  # type: ignore[misc]  # keras is untyped
    """The network. ``call((inputs, targets))`` is the training path and returns ``[B, L, 2]`` logits of the
    targets and of sampled negatives; :meth:`score` is the serving path."""

    def __init__(self, vocab: ItemVocab, config: SasrecConfig, *, seed: int, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.config = config
        self.vocab_size = vocab.size
        d = config.dim
        # Items start at zero and are pulled away from their category only as far as their own events justify.
        self.item_embedding = keras.layers.Embedding(
            vocab.size,
            d,
            embeddings_initializer="zeros",
            embeddings_regularizer=keras.regularizers.L2(config.item_l2) if config.item_l2 else None,
            name="item_embedding",
        )
        self.category_embedding = keras.layers.Embedding(vocab.category_size, d, name="category_embedding")
        self.position_embedding = keras.layers.Embedding(config.max_len, d, name="position_embedding")
        self.item_category = keras.Variable(vocab.category_index, trainable=False, dtype="int32", name="item_category")
        self.input_dropout = keras.layers.Dropout(config.dropout)
        self.attention = [
            keras.layers.MultiHeadAttention(config.heads, d // config.heads, dropout=config.dropout, name=f"attn_{i}")
            for i in range(config.blocks)
        ]
        self.norm_attention = [keras.layers.LayerNormalization(epsilon=1e-6) for _ in range(config.blocks)]
        self.norm_ffn = [keras.layers.LayerNormalization(epsilon=1e-6) for _ in range(config.blocks)]
        self.ffn = [
            keras.Sequential(
                [
                    keras.layers.Dense(d, activation="relu"),
                    keras.layers.Dropout(config.dropout),
                    keras.layers.Dense(d),
                    keras.layers.Dropout(config.dropout),
                ]
            )
            for _ in range(config.blocks)
        ]
        self.final_norm = keras.layers.LayerNormalization(epsilon=1e-6)
        self.seed_generator = keras.random.SeedGenerator(seed)

    def represent(self, index: Any) -> Any:
        """Item representations ``[..., d]`` of vocabulary indices."""
        category = keras.ops.take(self.item_category, index)
        return self.item_embedding(index) + self.category_embedding(category)

    def encode(self, seq: Any, training: bool = False) -> Any:
        """Hidden states ``[B, L, d]`` of index sequences ``[B, L]`` (left-padded with 0)."""
        mask = keras.ops.not_equal(seq, PAD)
        length = keras.ops.shape(seq)[1]
        x = self.represent(seq) * (self.config.dim**0.5) + self.position_embedding(keras.ops.arange(length))
        maskf = keras.ops.expand_dims(keras.ops.cast(mask, x.dtype), -1)
        x = self.input_dropout(x, training=training) * maskf
        causal = keras.ops.tril(keras.ops.ones((length, length), dtype="bool"))
        attention_mask = keras.ops.logical_and(keras.ops.expand_dims(mask, 1), causal)
        for attend, norm_a, norm_f, ffn in zip(
            self.attention, self.norm_attention, self.norm_ffn, self.ffn, strict=True
        ):
            q = norm_a(x)
            x = x + attend(q, x, attention_mask=attention_mask, training=training)
            x = (x + ffn(norm_f(x), training=training)) * maskf
        return self.final_norm(x)

    def call(self, inputs: Any, training: bool = False) -> Any:
        seq, targets = inputs
        if training and self.config.oov_rate > 0:
            drop = keras.random.uniform(keras.ops.shape(seq), seed=self.seed_generator) < self.config.oov_rate
            seq = keras.ops.where(keras.ops.logical_and(drop, seq != PAD), OOV, seq)
        h = self.encode(seq, training=training)
        negatives = keras.random.randint(keras.ops.shape(targets), 2, self.vocab_size, seed=self.seed_generator)
        pos = keras.ops.sum(h * self.represent(targets), axis=-1)
        neg = keras.ops.sum(h * self.represent(negatives), axis=-1)
        return keras.ops.stack([pos, neg], axis=-1)

    def score(self, seq: Any, candidates: Any) -> Any:
        """Logits ``[B, C]`` of candidate indices ``[B, C]`` after index sequences ``[B, L]``."""
        last = self.encode(seq)[:, -1, :]
        return keras.ops.sum(keras.ops.expand_dims(last, 1) * self.represent(candidates), axis=-1)


def build_sasrec(vocab: ItemVocab, config: SasrecConfig, *, seed: int) -> SasRec:
    keras.utils.set_random_seed(seed)
    model = SasRec(vocab, config, seed=seed, name="sasrec")
    model.compile(
        optimizer=keras.optimizers.Adam(config.learning_rate, beta_2=0.98),
        loss=keras.losses.BinaryCrossentropy(from_logits=True),
        jit_compile=False,  # XLA compiles for ~30 s on 2 cores and then runs no faster here
    )
    dummy = np.zeros((1, config.max_len), dtype=np.int64)
    model((dummy, dummy))  # build the weights
    return model


def fit_sasrec(
    model: SasRec,
    inputs: npt.NDArray[np.int64],
    targets: npt.NDArray[np.int64],
    *,
    epochs: int | None = None,
    verbose: int | str = "auto",
    callbacks: Sequence[Any] = (),
) -> Any:
    """Train on ``next_item_windows`` output (``[N, L]`` index arrays); ``callbacks`` are Keras callbacks.
    Returns Keras's History."""
    labels = np.zeros((*targets.shape, 2), dtype=np.float32)
    labels[..., 0] = 1.0
    return model.fit(
        (inputs, targets),
        labels,
        sample_weight=(targets != PAD).astype(np.float32),
        batch_size=model.config.batch_size,
        epochs=model.config.epochs if epochs is None else epochs,
        shuffle=True,
        verbose=verbose,
        callbacks=list(callbacks),
    )


def export_sasrec(model: SasRec, vocab: ItemVocab, directory: Path) -> None:
    """Write ``model`` as a SavedModel with the ``serving_default`` signature documented above."""
    import tensorflow as tf

    max_len = model.config.max_len
    keys = np.concatenate([[0], vocab.item_ids]).astype(np.int64)
    values = np.concatenate([[PAD], np.arange(2, vocab.size)]).astype(np.int64)

    class SasrecServing(tf.Module):  # type: ignore[misc]  # tf.Module is untyped
        def __init__(self) -> None:
            super().__init__(name="sasrec")
            # The variables, not the Keras model: tracking a subclassed Keras model makes TensorFlow trace a
            # default signature from float inputs, which this model cannot take.
            self.model_variables = [w.value for w in model.weights]
            self.vocab = tf.lookup.StaticHashTable(
                tf.lookup.KeyValueTensorInitializer(tf.constant(keys), tf.constant(values)), default_value=OOV
            )

        @tf.function(  # type: ignore[untyped-decorator]
            input_signature=[
                tf.TensorSpec([None, None], tf.int64, name="history"),
                tf.TensorSpec([None, None], tf.int64, name="item_id"),
            ]
        )
        def serve(self, history: Any, item_id: Any) -> dict[str, Any]:
            seq = self.vocab.lookup(history[:, -max_len:])
            seq = tf.pad(seq, [[0, 0], [max_len - tf.shape(seq)[1], 0]])
            logits = model.score(seq, self.vocab.lookup(item_id))
            return {"scores": tf.sigmoid(tf.cast(logits, tf.float32))}

    module = SasrecServing()
    tf.saved_model.save(module, str(directory), signatures={"serving_default": module.serve})
