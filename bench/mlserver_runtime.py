"""An ONNX Runtime model for MLServer, which ships none: the bench copies this file next to a model's
model-settings.json (implementation "mlserver_runtime.OnnxModel") so that MLServer, installed in a venv of its
own, serves the same ONNX file as hotwire in the latency-class table.

It runs inside MLServer's environment: it imports mlserver, numpy and onnxruntime, never hotwire. The session
has one intra-op thread and no spinning, as the bench's other servers; inputs are decoded with MLServer's
NumpyCodec (raw_input_contents included) and outputs encoded with it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import onnxruntime as ort
from mlserver import MLModel
from mlserver.codecs import NumpyCodec
from mlserver.types import InferenceRequest, InferenceResponse
from mlserver.utils import get_model_uri


class OnnxModel(MLModel):  # type: ignore[misc]  # mlserver is not installed where mypy runs
    async def load(self) -> bool:
        path = await get_model_uri(self._settings)
        options = ort.SessionOptions()
        options.intra_op_num_threads = 1
        options.inter_op_num_threads = 1
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        self._session = ort.InferenceSession(str(Path(path)), options, providers=["CPUExecutionProvider"])
        self._outputs = [output.name for output in self._session.get_outputs()]
        return True

    async def predict(self, payload: InferenceRequest) -> InferenceResponse:
        feeds: dict[str, Any] = {tensor.name: NumpyCodec.decode_input(tensor) for tensor in payload.inputs}
        results = self._session.run(None, feeds)
        return InferenceResponse(
            model_name=self.name,
            model_version=self.version,
            id=payload.id,
            outputs=[NumpyCodec.encode_output(name, array) for name, array in zip(self._outputs, results)],
        )
