"""Devices: the one-line GPU check, the CPU choice, the device record and even batches."""

import sys
import types

import numpy as np
import pytest
import tensorflow as tf
from mlflow.environment_variables import (
    MLFLOW_SYSTEM_METRICS_SAMPLES_BEFORE_LOGGING,
    MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL,
)

from mlpipe_vision import artifacts, devices, lineage, train_parameters, training
from tests.unit.test_training import write_preprocessed_split

RECORD_TAGS = {
    artifacts.DEVICE_TAG,
    artifacts.DEVICE_KIND_TAG,
    artifacts.DEVICE_COUNT_TAG,
    artifacts.GPU_NAMES_TAG,
    artifacts.GPU_DRIVER_TAG,
    artifacts.CPU_MODEL_TAG,
    artifacts.TF_VERSION_TAG,
    artifacts.TF_CUDA_TAG,
    artifacts.TF_CUDNN_TAG,
    artifacts.DTYPE_POLICY_TAG,
    artifacts.STRATEGY_TAG,
    artifacts.REPLICAS_TAG,
}


@pytest.fixture(autouse=True)
def no_gpu():
    if tf.config.list_physical_devices("GPU"):
        pytest.skip("these tests describe a machine without a GPU")


def test_device_gpu_without_a_gpu_fails_in_one_line_saying_what_tensorflow_sees():
    with pytest.raises(ValueError) as raised:
        devices.check_device("gpu")
    message = str(raised.value)
    assert "\n" not in message
    assert message.startswith(f"device=gpu, but TensorFlow {tf.__version__} (")
    assert "sees no GPU, only CPU:0" in message
    assert 'pip install -e ".[gpu]"' in message
    assert message.endswith("or train on the CPU with -P device=auto")
    with pytest.raises(ValueError, match="sees no GPU"):
        devices.configure_devices("gpu")


@pytest.mark.parametrize("device", ["auto", "cpu"])
def test_auto_and_cpu_train_on_the_cpu(device, monkeypatch):
    monkeypatch.delenv(devices.LOGICAL_CPUS_VARIABLE, raising=False)
    # CUDA images set this whether or not a GPU was passed; it is not a request for one.
    monkeypatch.setenv("NVIDIA_VISIBLE_DEVICES", "all")
    devices.check_device(device)
    trained_on = devices.configure_devices(device)
    assert (trained_on.kind, trained_on.count, trained_on.replicas) == ("cpu", 1, 1)
    assert trained_on.description == "cpu"
    assert tf.config.get_visible_devices("GPU") == []


def test_the_device_record_names_every_tag_as_text(monkeypatch):
    monkeypatch.delenv(devices.LOGICAL_CPUS_VARIABLE, raising=False)
    monkeypatch.setitem(sys.modules, "pynvml", None)  # nvidia-ml-py not installed
    record = devices.device_record(devices.configure_devices("cpu"))
    assert set(record) == RECORD_TAGS
    assert all(isinstance(value, str) and value for value in record.values())
    assert record[artifacts.DEVICE_KIND_TAG] == "cpu"
    assert record[artifacts.REPLICAS_TAG] == "1"
    assert record[artifacts.GPU_NAMES_TAG] == record[artifacts.GPU_DRIVER_TAG] == "none"
    assert record[artifacts.DTYPE_POLICY_TAG] == "float32"
    build = tf.sysconfig.get_build_info()
    assert record[artifacts.TF_CUDA_TAG] == str(build.get("cuda_version", "none"))


def test_the_driver_version_comes_from_nvml_when_it_answers(monkeypatch):
    class NVMLError(Exception):
        pass

    calls = []
    fake = types.SimpleNamespace(
        NVMLError=NVMLError,
        nvmlInit=lambda: calls.append("init"),
        nvmlSystemGetDriverVersion=lambda: b"550.54.15",
        nvmlShutdown=lambda: calls.append("shutdown"),
    )
    monkeypatch.setitem(sys.modules, "pynvml", fake)
    assert devices.gpu_driver() == "550.54.15"
    assert calls == ["init", "shutdown"]

    def no_driver():
        raise NVMLError("Driver Not Loaded")

    fake.nvmlInit = no_driver
    assert devices.gpu_driver() == "none"


@pytest.mark.parametrize(("value", "count"), [(None, 1), ("", 1), ("1", 1), ("2", 2), (" 4 ", 4)])
def test_logical_cpus_from_the_environment(value, count, monkeypatch):
    monkeypatch.delenv(devices.LOGICAL_CPUS_VARIABLE, raising=False)
    if value is not None:
        monkeypatch.setenv(devices.LOGICAL_CPUS_VARIABLE, value)
    assert devices.logical_cpu_count() == count


@pytest.mark.parametrize("value", ["0", "-1", "two", "1.5"])
def test_impossible_logical_cpus_are_refused(value, monkeypatch):
    monkeypatch.setenv(devices.LOGICAL_CPUS_VARIABLE, value)
    with pytest.raises(ValueError, match="MLPIPE_LOGICAL_CPUS must be a whole number >= 1"):
        devices.logical_cpu_count()


def test_the_global_batch_must_split_evenly_among_replicas():
    devices.check_global_batch(64, 1)
    devices.check_global_batch(64, 2)
    with pytest.raises(ValueError) as raised:
        devices.check_global_batch(33, 2)
    assert str(raised.value) == (
        "batch_size=33 is the global batch and does not split evenly among 2 replicas; "
        "use a multiple of 2 (32 or 34)"
    )


def test_an_unknown_device_is_refused():
    train_parameters.check_value("device", "gpu")
    with pytest.raises(ValueError, match="device must be one of auto, cpu, gpu, got 'tpu'"):
        train_parameters.TrainParameters(device="tpu").check()


@pytest.mark.parametrize(
    ("count", "batch_size", "replicas", "batches"),
    [
        (250, 32, 1, 8),  # one device keeps every batch, the last of 26
        (241, 40, 1, 7),  # even a last batch of 1
        (241, 40, 2, 6),  # a last batch of 1 for 2 replicas: one would train on nothing
        (242, 40, 2, 7),  # a last batch of 2: one image each
        (243, 40, 4, 6),  # 3 images for 4 replicas
        (10, 64, 2, 1),  # one short batch that splits
        (1, 64, 2, 0),
    ],
)
def test_a_last_batch_smaller_than_the_replicas_is_dropped(count, batch_size, replicas, batches):
    assert training.batches_kept(count, batch_size, replicas) == batches


@pytest.mark.parametrize(
    ("count", "replicas", "sizes"),
    [(241, 1, [40] * 6 + [1]), (241, 2, [40] * 6), (243, 2, [40] * 6 + [2])],
)
def test_distributed_batches_split_evenly(count, replicas, sizes, tmp_path):
    images = np.random.default_rng(0).integers(0, 256, (count, 5, 5, 1), dtype=np.uint8)
    meta = write_preprocessed_split(tmp_path, images, np.arange(count) % 3, 25 * 50)
    data = training.make_dataset(
        tmp_path, meta, "train", 3, 40, shuffle_seed=1, clock=None, replicas=replicas
    )
    assert [len(x) for x, _ in data.as_numpy_iterator()] == sizes
    assert int(data.cardinality()) == len(sizes)


@pytest.mark.parametrize(("replicas", "size"), [(1, 256), (2, 256), (3, 255), (7, 252)])
def test_evaluation_batches_are_a_multiple_of_the_replicas(replicas, size):
    assert training.evaluation_batch_size((28, 28, 1), replicas) == size
    assert training.evaluation_batch_size((2000, 2000, 3), replicas) == replicas


def test_train_runs_sample_system_metrics_unless_mlflow_is_told_otherwise(monkeypatch):
    for variable in (
        MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL,
        MLFLOW_SYSTEM_METRICS_SAMPLES_BEFORE_LOGGING,
    ):
        monkeypatch.setenv(variable.name, "")
        monkeypatch.delenv(variable.name)
    lineage.set_system_metrics_sampling()
    assert MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL.get() == lineage.SYSTEM_METRICS_SAMPLING_SECONDS
    assert (
        MLFLOW_SYSTEM_METRICS_SAMPLES_BEFORE_LOGGING.get()
        == lineage.SYSTEM_METRICS_SAMPLES_PER_POINT
    )
    monkeypatch.setenv(MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL.name, "0.5")
    lineage.set_system_metrics_sampling()
    assert MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL.get() == 0.5
    assert lineage.SYSTEM_METRICS_STAGES == ("train",)
