"""The served model, logged as code (MLflow models-from-code): nothing here is pickled.

`package` logs this file with three artifacts: the Keras network, and `meta.json` with the
class names, the input shape and the normalization. A request may hold raw 0-255 pixels in
any layout `mlpipe_vision.serving.images_from_request` accepts, or base64 PNG/JPEG images; it is
decoded, normalized with the same `normalize` the training data went through, and run
through the network as one traced `tf.function` for every batch size (`Model.predict` costs
tens of milliseconds per request for its per-call setup; this path well under one). The
request limits (`mlpipe_vision.serving.RequestLimits`) are read from the server's
environment when the model loads.
"""

import json
from pathlib import Path

import mlflow
import numpy as np
from mlflow.pyfunc import PythonModel

from mlpipe_vision import console, serving
from mlpipe_vision.images import normalize

# predict accepts several request layouts and checks them itself, against the signature
# `package` gives; a type hint would make MLflow validate one layout only.
with console.without_warning("Add type hints to the `predict` method"):

    class ImageClassifier(PythonModel):
        """Raw pixels or encoded images in; class id, class name and probabilities out."""

        def load_context(self, context: mlflow.pyfunc.PythonModelContext) -> None:
            """Load the network and meta.json, read the request limits, warm the inference up."""
            import keras
            import tensorflow as tf

            # Read here, not per request: a bad value stops the server at start-up, not later.
            self.limits = serving.RequestLimits.from_environment()
            meta = json.loads(Path(context.artifacts["meta"]).read_text())
            self.class_names = meta["class_names"]
            self.image_shape = tuple(meta["image_shape"])
            self.normalization = meta["normalization"]
            self.network = keras.models.load_model(context.artifacts["network"], compile=False)
            # One graph for every batch size, traced once: no Keras predict machinery per call.
            images = tf.TensorSpec((None, *self.image_shape), tf.float32)
            self.forward = tf.function(
                lambda batch: self.network(batch, training=False), input_signature=[images]
            ).get_concrete_function()
            self.probabilities(np.zeros((1, *self.image_shape), dtype=np.float32))

        def probabilities(self, raw_images: np.ndarray) -> np.ndarray:
            """Class probabilities (N, K) for raw 0-255 images (N, H, W, C)."""
            batch = normalize(raw_images, self.normalization)
            return self.forward(batch).numpy().astype(np.float64)

        # No type hints on purpose: MLflow 3 would validate requests against them (and warns
        # when they are absent), but this model accepts several layouts and checks them itself.
        def predict(self, context, model_input, params=None):  # noqa: ANN001
            """Answer one row per image: class_id, class_name, probability, p_<class>..."""
            raw_images = serving.images_from_request(model_input, self.image_shape, self.limits)
            return serving.format_predictions(self.probabilities(raw_images), self.class_names)


mlflow.models.set_model(ImageClassifier())
