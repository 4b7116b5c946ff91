"""Peak memory of a process tree, for the benchmarks and the memory tests.

Linux only: reads /proc. A stage run through `mlflow run` is a tree (the CLI, then the stage's
own Python), so the measure is the sum over the tree of each process's peak resident memory
(VmHWM), sampled while the processes live; the sum of peaks reached at different moments
can only overstate what was resident at once.
"""

import subprocess
import threading
import time
from pathlib import Path


def process_tree_peak_memory(pid: int) -> int:
    """Sum of the peak resident memory (VmHWM) of a process and all its descendants."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    total, pending = 0, [pid]
    while pending:
        current = pending.pop()
        pending += children.get(current, [])
        try:
            status = Path(f"/proc/{current}/status").read_text()
        except OSError:
            continue
        for line in status.splitlines():
            if line.startswith("VmHWM:"):
                total += int(line.split()[1]) * 1024
    return total


def run_measured(
    command: list[str], timeout: float | None = None, interval: float = 0.2, **popen_arguments
) -> dict:
    """Run a command to its end, sampling its process tree's peak memory.

    Returns:
        {"returncode", "output" (stdout and stderr), "peak_rss" (bytes), "seconds"}.

    Raises:
        subprocess.TimeoutExpired: After killing the command, when it outlives `timeout`.
    """
    started = time.perf_counter()
    process = subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, **popen_arguments
    )
    peak = 0
    done = threading.Event()

    def sample() -> None:
        nonlocal peak
        while not done.is_set():
            peak = max(peak, process_tree_peak_memory(process.pid))
            done.wait(interval)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    try:
        output = process.communicate(timeout=timeout)[0]
    except subprocess.TimeoutExpired:
        process.kill()
        process.communicate()
        raise
    finally:
        done.set()
    sampler.join()
    return {
        "returncode": process.returncode,
        "output": output,
        "peak_rss": peak,
        "seconds": time.perf_counter() - started,
    }
