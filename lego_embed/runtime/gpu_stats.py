"""GPU utilisation and free memory through NVML (nvidia-ml-py), for the runtime's stats."""

from __future__ import annotations

from typing import Any

import torch


def nvml_stats(device_index: int = 0) -> dict[str, Any]:
    """`{"gpu_util_pct", "memory_free_bytes", "memory_total_bytes", "name"}` of one GPU, or
    `{"nvml": "NVML unavailable: <why>"}` when there is no CUDA device, no nvidia-ml-py (install
    the `gpu` extra) or NVML fails."""
    if not torch.cuda.is_available():
        return {"nvml": "NVML unavailable: no CUDA device (CPU run)"}
    try:
        import pynvml
    except ImportError:
        return {"nvml": "NVML unavailable: nvidia-ml-py is not installed (the `gpu` extra)"}
    try:
        pynvml.nvmlInit()
        try:
            handle = pynvml.nvmlDeviceGetHandleByIndex(device_index)
            utilization = pynvml.nvmlDeviceGetUtilizationRates(handle)
            memory = pynvml.nvmlDeviceGetMemoryInfo(handle)
            name = pynvml.nvmlDeviceGetName(handle)
        finally:
            pynvml.nvmlShutdown()
    except pynvml.NVMLError as error:
        return {"nvml": f"NVML unavailable: {error}"}
    return {
        "nvml": "ok",
        "name": name.decode() if isinstance(name, bytes) else str(name),
        "gpu_util_pct": int(utilization.gpu),
        "memory_free_bytes": int(memory.free),
        "memory_total_bytes": int(memory.total),
    }
