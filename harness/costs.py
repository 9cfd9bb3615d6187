"""Cost of each phase: wall-clock, measured and analytic FLOPs, tokens, peak memory, device."""
from __future__ import annotations

import contextlib
import resource
import sys
import time
from dataclasses import asdict, dataclass, field

import torch

from harness.flops import FlopTally

PHASES = ("collect", "meta_train", "augment", "train", "generate", "inference")


@dataclass
class PhaseCost:
    phase: str
    wall_s: float = 0.0
    flops_measured: int = 0
    flops_analytic: int = 0
    tokens: int = 0  # token positions processed (padding included, as for the FLOPs)
    peak_mem_bytes: int = 0
    peak_mem_kind: str = ""
    device: str = ""
    shared_by: int | None = None  # one-off phases: how many target tasks were declared to share this cost
    artifact: str = ""  # one-off phases: the shared thing they built (e.g. a library LoRA's key), for counting users
    details: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "PhaseCost":
        return cls(**data)


def device_name(device: torch.device | str) -> str:
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    import platform

    return f"cpu ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"


def synchronize(device: torch.device | str) -> None:
    device = torch.device(device)
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class PhaseMeter:
    """Times and counts one phase. Work to be FLOP-counted runs inside `meter.count()`."""

    def __init__(self, phase: str, device: torch.device | str) -> None:
        if phase not in PHASES:
            raise ValueError(f"unknown phase {phase!r}; one of {PHASES}")
        self.device = torch.device(device)
        self.cost = PhaseCost(phase=phase, device=device_name(self.device))
        self.tally = FlopTally()
        self._start = 0.0

    def __enter__(self) -> "PhaseMeter":
        synchronize(self.device)
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
        self._start = time.perf_counter()
        return self

    def __exit__(self, *exc) -> None:
        synchronize(self.device)
        self.cost.wall_s += time.perf_counter() - self._start
        self.cost.flops_measured = self.tally.total
        self.cost.details.update(flops_counted_live=self.tally.counted, flops_reused_by_shape=self.tally.reused,
                                 flops_derived_by_fit=self.tally.derived)
        if self.device.type == "cuda":
            self.cost.peak_mem_bytes = torch.cuda.max_memory_allocated(self.device)
            self.cost.peak_mem_kind = "cuda_max_allocated"
        else:
            scale = 1 if sys.platform == "darwin" else 1024  # ru_maxrss is KiB on Linux
            self.cost.peak_mem_bytes = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale
            self.cost.peak_mem_kind = "process_max_rss"

    def count(self, shape_key=None) -> contextlib.AbstractContextManager:
        return self.tally.count(shape_key)

    def add(self, *, flops_analytic: int = 0, tokens: int = 0) -> None:
        self.cost.flops_analytic += int(flops_analytic)
        self.cost.tokens += int(tokens)

    def elapsed(self) -> float:
        synchronize(self.device)
        return time.perf_counter() - self._start
