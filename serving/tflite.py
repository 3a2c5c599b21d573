"""TF Serving's ``--prefer_tflite_model``: serve ``<version>/model.tflite`` with the TFLite interpreter.

A version directory may hold, next to ``saved_model.pb``, the same model converted to TensorFlow Lite
(:func:`convert_version` writes it). With ``recwatch serve --prefer_tflite_model`` each signature present in
``model.tflite`` runs in the TFLite interpreter; the SavedModel still answers metadata and every signature
the TFLite file lacks, as in TF Serving (where the flag is experimental too).

Why: a 32-row call of the benchmark's DCN ranker costs ~41 µs of CPU in the interpreter (XNNPACK, one thread)
against ~221 µs through TensorFlow's function runtime, and runs on the calling thread instead of
TensorFlow's inter-op thread, so a request needs one thread hand-off less. Scores differ from TensorFlow's by
float rounding (~2e-7 on the DCN). Quantized TFLite files (later model compression) load the same way.

An interpreter is not thread-safe: each signature has one, behind a lock (the model server computes on one
thread at a time per batch queue anyway). Inputs whose leading dimensions disagree go to the SavedModel,
which reports them as TF Serving does (INVALID_ARGUMENT).
"""

from __future__ import annotations

import logging
import threading
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Final

import numpy as np
import numpy.typing as npt

log = logging.getLogger(__name__)

TFLITE_FILE: Final = "model.tflite"


class TfliteCall:
    """One signature of a TFLite model, called like ``serving.model_repository._FlatCall``."""

    __slots__ = ("_dtypes", "_fast", "_lock", "_runner", "_shapes", "outputs")

    def __init__(self, runner: Any, input_details: Mapping[str, Any], output_names: list[str]) -> None:
        self._runner = runner
        self._dtypes = {name: np.dtype(d["dtype"]) for name, d in input_details.items()}
        self._lock = threading.Lock()
        self.outputs = output_names
        self._fast = _interpreter_parts(runner)
        self._shapes: tuple[tuple[str, tuple[int, ...]], ...] = ()  # the shapes the interpreter is allocated for

    def accepts(self, inputs: Mapping[str, npt.NDArray[Any]]) -> bool:
        dtypes = self._dtypes
        if len(inputs) != len(dtypes):
            return False
        rows = -1
        for name, array in inputs.items():
            want = dtypes.get(name)
            if want is None or array.dtype != want or not array.ndim:
                return False
            if rows < 0:
                rows = array.shape[0]
            elif array.shape[0] != rows:
                return False
        return True

    def __call__(self, inputs: Mapping[str, npt.NDArray[Any]]) -> dict[str, npt.NDArray[Any]]:
        fast = self._fast
        with self._lock:
            if fast is None:  # the runner resizes and reallocates its input tensors on every call
                out = self._runner(**inputs)
                return {name: np.array(value) for name, value in out.items()}  # copies: the buffers are reused
            wrapper, subgraph, index, outputs = fast
            shapes = tuple((name, a.shape) for name, a in inputs.items())
            if shapes != self._shapes:  # resize and allocate only when the shapes change (TFLite's usual way)
                for name, array in inputs.items():
                    wrapper.ResizeInputTensor(index[name], np.array(array.shape, dtype=np.int32), False, subgraph)
                wrapper.AllocateTensors(subgraph)
                self._shapes = shapes
            for name, array in inputs.items():
                wrapper.SetTensor(index[name], array, subgraph)
            wrapper.Invoke(subgraph)
            return {name: wrapper.GetTensor(i, subgraph) for name, i in outputs}  # GetTensor returns a copy


def _interpreter_parts(runner: Any) -> tuple[Any, int, dict[str, int], list[tuple[str, int]]] | None:
    """The interpreter wrapper, subgraph and tensor indices behind a ``SignatureRunner`` (private attributes
    of tf.lite's Python API, checked here), or None: then every call goes through the runner (~6 µs more)."""
    try:
        wrapper = runner._interpreter_wrapper
        subgraph = int(runner._subgraph_index)
        index = {str(k): int(v) for k, v in dict(runner._inputs).items()}
        outputs = [(str(k), int(v)) for k, v in dict(runner._outputs).items()]
        if not all(
            callable(getattr(wrapper, m, None))
            for m in ("ResizeInputTensor", "AllocateTensors", "SetTensor", "Invoke", "GetTensor")
        ):
            return None
    except (AttributeError, TypeError, ValueError):
        return None
    return wrapper, subgraph, index, outputs


def load_tflite(version_dir: Path, signature_keys: list[str]) -> dict[str, TfliteCall]:
    """The TFLite calls of ``version_dir/model.tflite`` for those of ``signature_keys`` it has; {} when there
    is no such file. Raises what the interpreter raises for a corrupt file (the loader reports the version as
    failed, as for a corrupt SavedModel)."""
    path = version_dir / TFLITE_FILE
    if not path.is_file():
        return {}
    interpreter = _interpreter(path)
    available = interpreter.get_signature_list()
    calls: dict[str, TfliteCall] = {}
    for key in signature_keys:
        if key not in available:
            continue
        runner = interpreter.get_signature_runner(key)
        calls[key] = TfliteCall(runner, runner.get_input_details(), list(available[key]["outputs"]))
    missing = sorted(set(signature_keys) - set(calls))
    if missing:
        log.info("%s has no TFLite signature %s: the SavedModel answers those", path, ", ".join(missing))
    return calls


def _interpreter(path: Path) -> Any:
    try:  # the interpreter's new home; TensorFlow's copy is deprecated but still shipped
        from ai_edge_litert.interpreter import Interpreter
    except ImportError:
        import tensorflow as tf

        Interpreter = tf.lite.Interpreter
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # tf.lite.Interpreter's deprecation notice, once per load
        return Interpreter(model_path=str(path), num_threads=1)


def convert_version(version_dir: Path, signature_keys: list[str] | None = None) -> Path:
    """Convert the SavedModel in ``version_dir`` to ``version_dir/model.tflite`` (float, no quantization) and
    return its path. ``signature_keys``: the signatures to convert (default: those with the predict method,
    which are the ones TFLite can run; Classify/Regress take serialized tf.Examples). Written atomically."""
    import tensorflow as tf
    from tensorflow.core.protobuf import saved_model_pb2

    if signature_keys is None:
        saved = saved_model_pb2.SavedModel.FromString((version_dir / "saved_model.pb").read_bytes())
        defs = saved.meta_graphs[0].signature_def
        signature_keys = sorted(
            k for k, d in defs.items() if d.method_name in ("", "tensorflow/serving/predict") and not k.startswith("_")
        )
    converter = tf.lite.TFLiteConverter.from_saved_model(str(version_dir), signature_keys=signature_keys)
    blob = converter.convert()
    target = version_dir / TFLITE_FILE
    staging = target.with_suffix(".tflite.tmp")
    staging.write_bytes(blob)
    staging.replace(target)
    return target
