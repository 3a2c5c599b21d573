"""Both models trained for one epoch on a small synthetic log, exported, and loaded back as the server loads them."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from training.evaluate import Popularity, evaluate
from training.pipeline import Holdout, Trained, train_and_export
from training.synthetic import CALIBRATION, generate

pytestmark = pytest.mark.integration

# Longer histories than the real slice (about 6 events per user), so that one epoch has sequences to learn from.
CALIBRATION_WITH_HISTORY = dataclasses.replace(CALIBRATION, single_event_users=0.1, events_tail_ratio=0.85)


@pytest.fixture(scope="module")
def split() -> Holdout:
    return Holdout.build(generate(10_000, seed=5, calibration=CALIBRATION_WITH_HISTORY))


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory, split: Holdout) -> dict[str, Trained]:
    base = tmp_path_factory.mktemp("models")
    out = {}
    for kind in ("ctr", "sasrec"):
        for epochs, name in ((1, kind), (0, f"{kind}-untrained")):
            out[name] = train_and_export(
                kind, split.train, base, name, 1, seed=1, epochs=epochs, verbose=0, holdout=split
            )
    return out


def signature(path: Path) -> tuple[Any, Any]:
    import tensorflow as tf

    root = tf.saved_model.load(str(path))
    return root, root.signatures["serving_default"]


def specs(fn: Any) -> dict[str, tuple[str, list[int | None]]]:
    return {k: (v.dtype.name, v.shape.as_list()) for k, v in fn.structured_input_signature[1].items()}


def test_models_are_written_in_the_repository_layout(models: dict[str, Trained]) -> None:
    for name, trained in models.items():
        assert trained.path.name == "1" and trained.path.parent.name == name
        assert (trained.path / "saved_model.pb").is_file()
        assert not [p for p in trained.path.parent.iterdir() if p.name.startswith(".tmp")]


def test_ctr_signature_scores_probabilities(models: dict[str, Trained], split: Holdout) -> None:
    import tensorflow as tf

    _root, fn = signature(models["ctr"].path)
    assert specs(fn) == {"user_id": ("int64", [None]), "item_id": ("int64", [None]), "category_id": ("int64", [None])}
    items = np.concatenate([split.train.item[:4], [123456789]])  # the last item is unknown
    cats = np.concatenate([split.train.category[:4], [987654321]])
    out = fn(
        user_id=tf.constant([split.train.user[0]], tf.int64),
        item_id=tf.constant(items, tf.int64),
        category_id=tf.constant(cats, tf.int64),
    )
    scores = out["scores"].numpy()
    assert list(out) == ["scores"] and out["scores"].dtype == tf.float32
    assert scores.shape == (5,)  # one user broadcast over five items
    assert ((scores >= 0) & (scores <= 1)).all()


def test_sasrec_signature_ranks_candidates_after_any_history_length(models: dict[str, Trained], split: Holdout) -> None:
    import tensorflow as tf

    _root, fn = signature(models["sasrec"].path)
    assert specs(fn) == {"history": ("int64", [None, None]), "item_id": ("int64", [None, None])}
    known = split.train.item
    for length in (3, 80):  # shorter and longer than the model's window
        history = np.stack([known[:length], np.pad(known[5 : 5 + length - 2], (2, 0))])  # second row left-padded
        candidates = np.array([[known[10], known[11], 424242], [known[12], 0, known[13]]])
        out = fn(history=tf.constant(history, tf.int64), item_id=tf.constant(candidates, tf.int64))
        scores = out["scores"].numpy()
        assert out["scores"].dtype == tf.float32 and scores.shape == (2, 3)
        assert ((scores >= 0) & (scores <= 1)).all()


def test_the_model_server_loads_both(models: dict[str, Trained]) -> None:
    from serving.model_repository import load_latest

    for name in ("ctr", "sasrec"):
        loaded = load_latest(models[name].path.parent, name)
        assert loaded.version == 1
        assert loaded.signature().output_names == ["scores"]
        assert "item_id" in loaded.signature().inputs  # the server records this input in inference events


def test_one_epoch_of_training_beats_the_untrained_model_on_the_holdout(models: dict[str, Trained]) -> None:
    for kind in ("ctr", "sasrec"):
        trained, untrained = models[kind].quality, models[f"{kind}-untrained"].quality
        assert trained is not None and trained.hit_rate is not None and trained.ndcg is not None
        assert untrained is not None and untrained.hit_rate is not None and untrained.ndcg is not None
        assert trained.hit_rate > untrained.hit_rate, kind
        assert trained.ndcg > untrained.ndcg, kind


def test_the_ctr_ranker_learns_what_popularity_knows(models: dict[str, Trained], split: Holdout) -> None:
    """The ranker gets item counts as features; after training it ranks at least as well as counts alone would,
    up to sampling noise (two standard errors of a hit rate over the queries)."""
    pop = Popularity(split.train)
    popularity = evaluate(pop.rank_scores, None, split.task, split.ctr)
    ctr = models["ctr"].quality
    assert ctr is not None and ctr.hit_rate is not None and popularity.hit_rate is not None
    noise = 2 * (popularity.hit_rate * (1 - popularity.hit_rate) / len(split.task)) ** 0.5
    assert ctr.hit_rate > popularity.hit_rate - noise
