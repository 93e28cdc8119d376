"""What a benchmark ran on: software versions, the GPU and its NVML readings, measured peaks."""

from __future__ import annotations

import platform
import time
from typing import Any

import torch

from lego_embed.bench.roofline import DevicePeaks
from lego_embed.runtime.gpu_stats import nvml_stats


def software_record() -> dict[str, Any]:
    """Python, torch, CUDA and cuDNN versions and the machine."""
    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version() if torch.cuda.is_available() else None,
        "machine": platform.platform(),
        "cpu_threads": torch.get_num_threads(),
    }


def device_record(device: torch.device) -> dict[str, Any]:
    """The device's name, memory and stream priorities, and NVML's readings now (utilisation,
    memory, temperature, power, clocks, driver); for a CPU, what the CPU run stands in for."""
    if device.type != "cuda":
        return {"name": platform.processor() or "cpu", "type": "cpu",
                "nvml": nvml_stats()["nvml"]}
    properties = torch.cuda.get_device_properties(device)
    record: dict[str, Any] = {
        "name": properties.name,
        "type": "cuda",
        "capability": f"{properties.major}.{properties.minor}",
        "memory_total_bytes": properties.total_memory,
        "multiprocessors": properties.multi_processor_count,
        "stream_priority_range": list(torch.cuda.Stream.priority_range()),
        **nvml_stats(device.index or 0),
    }
    record.update(_nvml_extras(device.index or 0))
    return record


def _nvml_extras(index: int) -> dict[str, Any]:
    """Driver version, temperature, power and clocks (empty when NVML is not there)."""
    try:
        import pynvml
    except ImportError:
        return {}
    try:
        pynvml.nvmlInit()
        try:
            handle = pynvml.nvmlDeviceGetHandleByIndex(index)
            driver = pynvml.nvmlSystemGetDriverVersion()
            return {
                "driver": driver.decode() if isinstance(driver, bytes) else str(driver),
                "temperature_c": pynvml.nvmlDeviceGetTemperature(
                    handle, pynvml.NVML_TEMPERATURE_GPU),
                "power_w": pynvml.nvmlDeviceGetPowerUsage(handle) / 1000.0,
                "sm_clock_mhz": pynvml.nvmlDeviceGetClockInfo(handle, pynvml.NVML_CLOCK_SM),
                "memory_clock_mhz": pynvml.nvmlDeviceGetClockInfo(handle, pynvml.NVML_CLOCK_MEM),
            }
        finally:
            pynvml.nvmlShutdown()
    except pynvml.NVMLError as error:
        return {"nvml_extras_error": str(error)}


def _seconds(device: torch.device, work, repeats: int) -> float:
    """Median wall time of `work()` (synchronised on CUDA) over `repeats` runs after one more."""
    samples = []
    for run in range(repeats + 1):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        started = time.perf_counter()
        work()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        if run:
            samples.append(time.perf_counter() - started)
    return sorted(samples)[len(samples) // 2]


def measured_peaks(
    device: torch.device, dtype: torch.dtype, matmul_size: int, copy_bytes: int, repeats: int = 5
) -> DevicePeaks:
    """FLOP/s of a square matmul of `matmul_size` in `dtype` and bytes/s of copying a
    `copy_bytes` buffer (read + write), measured on the device: what is reachable in practice."""
    a = torch.randn(matmul_size, matmul_size, device=device, dtype=dtype)
    b = torch.randn(matmul_size, matmul_size, device=device, dtype=dtype)
    matmul_s = _seconds(device, lambda: a @ b, repeats)
    source = torch.empty(copy_bytes, dtype=torch.uint8, device=device)
    target = torch.empty_like(source)
    copy_s = _seconds(device, lambda: target.copy_(source), repeats)
    return DevicePeaks(2.0 * matmul_size**3 / matmul_s, 2.0 * copy_bytes / copy_s,
                       f"measured: {matmul_size}^3 {str(dtype).removeprefix('torch.')} matmul, "
                       f"{copy_bytes / 2**20:.0f} MiB copy")
