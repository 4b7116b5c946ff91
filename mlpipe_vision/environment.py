"""The pip requirements of the models this pipeline logs, pinned to what is installed here.

Left to itself, MLflow infers a model's requirements from the modules its code imports; for
the packaged model that missed TensorFlow and OpenCV and named this project's own
distribution, which PyPI resolves to whoever owns that name. So both logged models state
theirs: the distributions their served code imports, at the versions that trained and
packaged them. This project's own code travels inside the packaged model (`code_paths`) and
is never a requirement.
"""

import importlib.metadata

# mlflow-skinny is MLflow's own package with the model loading and the scoring server
# (FastAPI, uvicorn); the full `mlflow` distribution adds the tracking server and UI, and
# with them matplotlib, scikit-learn, scipy and pyarrow, which serving never imports.
# pandas is what the scoring server hands `predict`; mlflow-skinny does not require it.
KERAS_MODEL_DISTRIBUTIONS = ("mlflow-skinny", "tensorflow", "keras", "numpy", "pandas")
# The packaged model also decodes PNG/JPEG requests: Pillow reads an image's size from its
# header before OpenCV decodes it (`mlpipe_vision.images.image_size`).
PACKAGED_MODEL_DISTRIBUTIONS = (*KERAS_MODEL_DISTRIBUTIONS, "opencv-python-headless", "pillow")


def pinned_requirements(distributions: tuple[str, ...]) -> list[str]:
    """Pin each distribution to the version installed in this environment.

    Args:
        distributions: Distribution names as PyPI knows them.

    Returns:
        Requirement lines such as "tensorflow==2.21.0".

    Raises:
        ValueError: If one of them is not installed, naming it and how to install it.
    """
    requirements = []
    for distribution in distributions:
        try:
            version = importlib.metadata.version(distribution)
        except importlib.metadata.PackageNotFoundError:
            raise ValueError(
                f"{distribution} is not installed, so the model's requirements cannot be "
                f"pinned to the version that made it; install it (pip install {distribution}) "
                "or the project with `make install`"
            ) from None
        requirements.append(f"{distribution}=={version}")
    return requirements
