"""TF Serving's Classify and Regress: tf.Example inputs for signatures exported with the classify / regress
method (``tf.compat.v1.saved_model.classification_signature_def`` / ``regression_signature_def``).

As TF Serving does, the examples are serialized into the signature's single string input (``inputs``), the
signature must have been exported with the matching method name, and the answer is built from its
``classes`` / ``scores`` outputs (Classify) or its ``outputs`` output (Regress). ``example_list_with_context``
merges the context features into every example. Both go through :class:`serving.predict.Predictor`, so each
call publishes one event (``api`` = ``classify`` / ``regress``).
"""

from __future__ import annotations

from typing import Any, Final

import numpy as np
import numpy.typing as npt

from serving.errors import InvalidRequestError
from serving.model_repository import Signature

CLASSIFY_METHOD: Final = "tensorflow/serving/classify"
REGRESS_METHOD: Final = "tensorflow/serving/regress"
INPUTS_KEY: Final = "inputs"


def serialized_examples(input_proto: Any) -> list[bytes]:
    """The request's examples, serialized (context features merged in for example_list_with_context)."""
    which = input_proto.WhichOneof("kind")
    if which == "example_list":
        return [e.SerializeToString() for e in input_proto.example_list.examples]
    if which == "example_list_with_context":
        from tensorflow.core.example import example_pb2

        ctx = input_proto.example_list_with_context.context
        out = []
        for e in input_proto.example_list_with_context.examples:
            merged = example_pb2.Example()
            merged.CopyFrom(ctx)
            merged.MergeFrom(e)
            out.append(merged.SerializeToString())
        return out
    raise InvalidRequestError("Input is empty: it holds neither example_list nor example_list_with_context")


def examples_decoder(method: str, examples: list[bytes]) -> Any:
    """A PredictCall.decode for Classify/Regress: checks the signature's method and feeds the examples."""

    def decode(signature: Signature) -> dict[str, npt.NDArray[Any]]:
        actual = signature.method_name
        if actual != method:
            raise InvalidRequestError(
                f"Expected {method.rsplit('/', 1)[1]} signature method_name to be {method}. Was: {actual}"
            )
        if not examples:
            raise InvalidRequestError("Input is empty: no examples")
        if list(signature.inputs) != [INPUTS_KEY]:
            raise InvalidRequestError(f"signature {signature.name!r} must take exactly one input, {INPUTS_KEY!r}")
        return {INPUTS_KEY: np.array(examples, dtype=object)}

    return decode


def classification_result(outputs: dict[str, npt.NDArray[Any]], rows: int, result: Any) -> None:
    """Fill a ClassificationResult from the signature's ``classes`` and/or ``scores`` outputs ([rows, k])."""
    classes = outputs.get("classes")
    scores = outputs.get("scores")
    if classes is None and scores is None:
        raise InvalidRequestError("classification signature has neither a 'classes' nor a 'scores' output")
    for i in range(rows):
        c_row = classes[i].ravel() if classes is not None else None
        s_row = scores[i].ravel() if scores is not None else None
        k = len(c_row) if c_row is not None else len(s_row)  # type: ignore[arg-type]
        out = result.classifications.add()
        for j in range(k):
            cls = out.classes.add()
            if c_row is not None:
                label = c_row[j]
                cls.label = label.decode() if isinstance(label, bytes) else str(label)
            if s_row is not None:
                cls.score = float(s_row[j])


def regression_result(outputs: dict[str, npt.NDArray[Any]], rows: int, result: Any) -> None:
    values = outputs.get("outputs")
    if values is None:
        raise InvalidRequestError("regression signature has no 'outputs' output")
    flat = np.asarray(values, dtype=np.float64).reshape(rows, -1)
    if flat.shape[1] != 1:
        raise InvalidRequestError(f"regression output must hold one value per example, got shape {values.shape}")
    for v in flat[:, 0]:
        result.regressions.add(value=float(v))
