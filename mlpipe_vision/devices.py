"""Devices: which ones train, under which distribution strategy, and the run's record of them.

`configure_devices` turns the `device` train parameter (auto, cpu, gpu) into a strategy:
one GPU or the CPU trains as is; more than one GPU trains under `MirroredStrategy`, and so
does the CPU split into MLPIPE_LOGICAL_CPUS logical devices, which is how the multi-GPU path
runs on a machine without GPUs (the tests do). Under a strategy `batch_size` is the global
batch, split among the replicas, and the learning rate is the one given, not scaled by the
number of replicas. `check_device` refuses device=gpu in one line when TensorFlow sees no
GPU, before any data is read. `device_record` is what a train run tags about the machine.

NVIDIA_VISIBLE_DEVICES is not read: CUDA images set it to "all" whether or not a GPU was
passed to the container, so only what TensorFlow itself lists counts.
"""

import contextlib
import dataclasses
import os
import platform

import keras
import tensorflow as tf

from mlpipe_vision import artifacts

LOGICAL_CPUS_VARIABLE = "MLPIPE_LOGICAL_CPUS"
NOT_KNOWN = "none"


@dataclasses.dataclass(frozen=True)
class Devices:
    """What trains: the strategy to build and compile the model in, and what it runs on."""

    strategy: tf.distribute.Strategy
    kind: str  # "cpu" or "gpu"
    count: int  # the devices training uses: GPUs, or logical CPUs (1 for the whole CPU)
    description: str  # "cpu", "2 logical cpus", "1 gpu", "2 gpus"

    @property
    def replicas(self) -> int:
        """The number of model replicas a training step runs on."""
        return int(self.strategy.num_replicas_in_sync)


def check_device(device: str) -> None:
    """Refuse device=gpu in one line when TensorFlow lists no GPU it can use.

    Args:
        device: The `device` train parameter: "auto", "cpu" or "gpu".

    Raises:
        ValueError: device=gpu and no GPU: what TensorFlow sees and what to do.
    """
    if device != "gpu" or tf.config.list_physical_devices("GPU"):
        return
    physical = tf.config.list_physical_devices()
    seen = ", ".join(item.name.removeprefix("/physical_device:") for item in physical)
    build = tf.sysconfig.get_build_info()
    cuda = (
        f"built with CUDA {build.get('cuda_version', '?')}"
        if build.get("is_cuda_build")
        else "a build without CUDA"
    )
    raise ValueError(
        f"device=gpu, but TensorFlow {tf.__version__} ({cuda}) sees no GPU, only {seen}: "
        'check that nvidia-smi lists one, install the CUDA libraries (pip install -e ".[gpu]"), '
        "in Docker pass --gpus all; or train on the CPU with -P device=auto"
    )


def check_global_batch(batch_size: int, replicas: int) -> None:
    """Refuse a global batch that does not split evenly among the replicas.

    Raises:
        ValueError: Naming the nearest sizes that do.
    """
    if batch_size % replicas:
        below = max(replicas, batch_size // replicas * replicas)
        raise ValueError(
            f"batch_size={batch_size} is the global batch and does not split evenly among "
            f"{replicas} replicas; use a multiple of {replicas} ({below} or {below + replicas})"
        )


def logical_cpu_count() -> int:
    """The number of logical CPU devices asked for by MLPIPE_LOGICAL_CPUS (1 when unset).

    Raises:
        ValueError: For a value that is not a whole number of at least 1.
    """
    value = os.environ.get(LOGICAL_CPUS_VARIABLE, "").strip() or "1"
    if not value.isdigit() or int(value) < 1:
        raise ValueError(f"{LOGICAL_CPUS_VARIABLE} must be a whole number >= 1, got {value!r}")
    return int(value)


def split_cpu(count: int) -> list[str]:
    """Split the CPU into `count` logical devices (before TensorFlow starts its runtime).

    Returns:
        The logical CPU devices' names.
    """
    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(
        cpu, [tf.config.LogicalDeviceConfiguration() for _ in range(count)]
    )
    return [item.name for item in tf.config.list_logical_devices("CPU")]


def configure_devices(device: str = "auto", mixed_precision: str = "auto") -> Devices:
    """Use what the machine has: GPUs with memory growth and mixed precision, else the CPU.

    Args:
        device: "auto" (the GPUs if any, else the CPU), "cpu" (GPUs hidden) or "gpu"
            (refused by `check_device` when there is none).
        mixed_precision: "auto" (on where there is a GPU), "true" or "false".

    Returns:
        The devices and their strategy: MirroredStrategy over several GPUs, or over the
        logical CPUs of MLPIPE_LOGICAL_CPUS; the default strategy otherwise.
    """
    check_device(device)
    if device == "cpu" and tf.config.list_physical_devices("GPU"):
        tf.config.set_visible_devices([], "GPU")
    gpus = tf.config.get_visible_devices("GPU")
    for gpu in gpus:
        # RuntimeError: the GPU was initialized by an earlier call here; growth stays as set.
        with contextlib.suppress(RuntimeError):
            tf.config.experimental.set_memory_growth(gpu, True)
    # float16 halves memory and uses tensor cores on a GPU; on a CPU it is only slower.
    mixed = bool(gpus) if mixed_precision == "auto" else mixed_precision == "true"
    keras.mixed_precision.set_global_policy("mixed_float16" if mixed else "float32")
    if len(gpus) > 1:
        return Devices(tf.distribute.MirroredStrategy(), "gpu", len(gpus), f"{len(gpus)} gpus")
    if gpus:
        return Devices(tf.distribute.get_strategy(), "gpu", 1, "1 gpu")
    cpus = logical_cpu_count()
    if cpus == 1:
        return Devices(tf.distribute.get_strategy(), "cpu", 1, "cpu")
    # NCCL, MirroredStrategy's default all-reduce, is for GPUs.
    strategy = tf.distribute.MirroredStrategy(
        split_cpu(cpus), cross_device_ops=tf.distribute.ReductionToOneDevice()
    )
    return Devices(strategy, "cpu", cpus, f"{cpus} logical cpus")


def cpu_model() -> str:
    """The CPU's model name, from /proc/cpuinfo where there is one."""
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as cpuinfo:
        for line in cpuinfo:
            if line.startswith("model name"):
                return line.partition(":")[2].strip()
    return platform.processor() or NOT_KNOWN


def gpu_names(devices: Devices) -> str:
    """The names of the GPUs training uses, as TensorFlow reports them, comma-separated."""
    if devices.kind != "gpu":
        return NOT_KNOWN
    names = [
        tf.config.experimental.get_device_details(gpu).get("device_name", gpu.name)
        for gpu in tf.config.get_visible_devices("GPU")
    ]
    return ", ".join(names) or NOT_KNOWN


def gpu_driver() -> str:
    """The NVIDIA driver's version through nvidia-ml-py (the `gpu` extra), if it answers."""
    try:
        import pynvml
    except ImportError:
        return NOT_KNOWN
    try:
        pynvml.nvmlInit()
        try:
            version = pynvml.nvmlSystemGetDriverVersion()
        finally:
            pynvml.nvmlShutdown()
    except pynvml.NVMLError:  # no driver or no GPU
        return NOT_KNOWN
    return version.decode() if isinstance(version, bytes) else str(version)


def device_record(devices: Devices) -> dict[str, str]:
    """The tags that say what a train run ran on (names in `mlpipe_vision.artifacts`).

    The image of a run made in a container is tagged by `lineage.record_container`.
    """
    build = tf.sysconfig.get_build_info()
    return {
        artifacts.DEVICE_TAG: devices.description,
        artifacts.DEVICE_KIND_TAG: devices.kind,
        artifacts.DEVICE_COUNT_TAG: str(devices.count),
        artifacts.GPU_NAMES_TAG: gpu_names(devices),
        artifacts.GPU_DRIVER_TAG: gpu_driver(),
        artifacts.CPU_MODEL_TAG: cpu_model(),
        artifacts.TF_VERSION_TAG: tf.__version__,
        artifacts.TF_CUDA_TAG: str(build.get("cuda_version", NOT_KNOWN)),
        artifacts.TF_CUDNN_TAG: str(build.get("cudnn_version", NOT_KNOWN)),
        artifacts.DTYPE_POLICY_TAG: keras.mixed_precision.global_policy().name,
        artifacts.STRATEGY_TAG: type(devices.strategy).__name__,
        artifacts.REPLICAS_TAG: str(devices.replicas),
    }
