"""Real data: the default network on the full Fashion-MNIST, every stage through `mlflow run`."""

import pytest

from tests.conftest import FASHION_MNIST_DIR, mlflow_run

# The epochs of the README's demo; the default network is chosen to pass with them.
DEMO_EPOCHS = 10

pytestmark = [
    pytest.mark.slow(reason="trains on all 60,000 Fashion-MNIST images: minutes on a CPU"),
    pytest.mark.skipif(
        not (FASHION_MNIST_DIR / "train-images-idx3-ubyte.gz").is_file(),
        reason="needs Fashion-MNIST: apt-get install dataset-fashion-mnist",
    ),
]


def test_default_network_reaches_90_percent_on_fashion_mnist(tracking):
    get_data = mlflow_run(tracking, "get_data", dataset="fashion_mnist", source=FASHION_MNIST_DIR)
    preprocess = mlflow_run(tracking, "preprocess", data=f"runs:/{get_data['run_id']}/dataset")
    train = mlflow_run(
        tracking, "train", data=f"runs:/{preprocess['run_id']}/preprocessed", epochs=DEMO_EPOCHS
    )
    run = tracking["client"].get_run(train["run_id"])
    assert run.data.params["network"] == "cnn_3x48"
    assert run.data.metrics["test_accuracy"] >= 0.90, train["output"][-3000:]
