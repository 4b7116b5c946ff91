"""(b) of bench/serving.py: the product's pyfunc, calling Model.predict as the workshop did.

Logged as models-from-code with the packaged model's own artifacts (the network and
meta.json) and `mlpipe_vision` as code, so the one difference from the product is how the
network is called: `Model.predict` per request instead of the compiled inference path.
"""

import mlflow
import numpy as np

from mlpipe_vision.images import normalize
from mlpipe_vision.pyfunc_model import ImageClassifier


class WorkshopImageClassifier(ImageClassifier):
    """The product's model with the network called through `Model.predict`."""

    def probabilities(self, raw_images):
        """Class probabilities (N, K) for raw 0-255 images (N, H, W, C), via Model.predict."""
        batch = normalize(raw_images, self.normalization)
        return np.asarray(self.network.predict(batch, verbose=0), dtype=np.float64)


mlflow.models.set_model(WorkshopImageClassifier())
