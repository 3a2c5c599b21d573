"""MLServer model serving the benchmark's SavedModel; imported by ``mlserver start`` in the mlserver venv.

MLServer has no TensorFlow runtime, so this is a custom ``MLModel``: ``load`` loads the SavedModel named by
``parameters.uri`` in model-settings.json, ``predict`` decodes the v2 inputs with ``NumpyCodec``, calls the
``serving_default`` signature and encodes ``scores``. peers.py writes settings.json (127.0.0.1 only, its ports,
``debug: false`` so no access-log line per request) and model-settings.json beside a copy of this file.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from mlserver import MLModel
from mlserver.codecs import NumpyCodec
from mlserver.types import InferenceRequest, InferenceResponse


class SavedModelRanker(MLModel):  # type: ignore[misc]  # mlserver is not installed where mypy runs
    async def load(self) -> bool:
        import tensorflow as tf

        uri = self.settings.parameters.uri
        self._signature: Any = tf.saved_model.load(uri).signatures["serving_default"]
        return True

    async def predict(self, payload: InferenceRequest) -> InferenceResponse:
        inputs = {tensor.name: NumpyCodec.decode_input(tensor) for tensor in payload.inputs}
        scores = np.asarray(self._signature(**inputs)["scores"].numpy())
        return InferenceResponse(
            model_name=self.name, id=payload.id, outputs=[NumpyCodec.encode_output("scores", scores)]
        )
