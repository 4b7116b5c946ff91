"""(d) of bench/serving.py: a pyfunc that reads nothing and runs nothing.

It answers a precomputed table of the product's shape (class id, class name, probabilities)
and never looks at the pixels, so its latency behind `mlflow models serve` is the scoring
server's own cost (HTTP, FastAPI, JSON and pandas) for the same request body.
"""

import json
from pathlib import Path

import mlflow
import numpy as np
from mlflow.pyfunc import PythonModel

from mlpipe_vision import serving


class DoNothing(PythonModel):
    """A uniform answer for as many images as the request holds, computed once per count."""

    def load_context(self, context):
        """Read the class names and the image width from the product's meta.json."""
        meta = json.loads(Path(context.artifacts["meta"]).read_text())
        self.class_names = meta["class_names"]
        self.width = meta["image_shape"][1]
        self.answers = {}

    def predict(self, context, model_input, params=None):
        """The precomputed answer: one image for the workshop's H x W table, else one per row."""
        count = 1 if model_input.shape[1] == self.width else len(model_input)
        if count not in self.answers:
            uniform = np.full((count, len(self.class_names)), 1 / len(self.class_names))
            self.answers[count] = serving.format_predictions(uniform, self.class_names)
        return self.answers[count]


mlflow.models.set_model(DoNothing())
