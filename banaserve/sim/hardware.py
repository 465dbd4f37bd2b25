"""Accelerator presets for the roofline cost model, or read from a JSON file.

Efficiency factors are the share of the datasheet peak that serving kernels reach; they are our
choices (docs/sim.md says why), not measurements of any one system.
"""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass

GB = 1e9
TB = 1e12


@dataclass(slots=True)
class HardwareSpec:
    """One accelerator (a TP group is `tp` of them joined by `interconnect_bandwidth`)."""

    name: str
    peak_flops: float  # dense bf16 FLOP/s
    hbm_bandwidth: float  # bytes/s
    memory_bytes: float
    compute_efficiency: float = 0.65  # achieved share of peak_flops in GEMMs and attention
    memory_efficiency: float = 0.88  # achieved share of hbm_bandwidth when streaming weights / KV
    interconnect_bandwidth: float = 300 * GB  # bytes/s per GPU per direction (NVLink), for TP
    interconnect_efficiency: float = 0.7  # ring all-reduce bus bandwidth / link bandwidth
    allreduce_latency_s: float = 10e-6  # per all-reduce call (NCCL small-message latency)
    step_overhead_s: float = 0.5e-3  # per engine step: scheduling, input prep, launches, sampling
    memory_utilization: float = 0.9  # share of memory the engine may use (rest: activations, context)

    def validate(self) -> None:
        for field in ("peak_flops", "hbm_bandwidth", "memory_bytes", "interconnect_bandwidth"):
            if not getattr(self, field) > 0:
                raise ValueError(f"hardware {self.name!r}: {field} must be > 0")
        for field in ("compute_efficiency", "memory_efficiency", "interconnect_efficiency",
                      "memory_utilization"):
            if not 0 < getattr(self, field) <= 1:
                raise ValueError(f"hardware {self.name!r}: {field} must be in (0, 1]")
        if self.allreduce_latency_s < 0 or self.step_overhead_s < 0:
            raise ValueError(f"hardware {self.name!r}: latencies must be >= 0")


# Datasheet peaks (dense bf16, no sparsity). Efficiencies: see docs/sim.md "Hardware presets".
PRESETS: dict[str, HardwareSpec] = {
    "a100-80g": HardwareSpec("a100-80g", 312 * TB, 2.0 * TB, 80 * GB, compute_efficiency=0.70,
                             memory_efficiency=0.90, interconnect_bandwidth=300 * GB),
    "h100": HardwareSpec("h100", 989 * TB, 3.35 * TB, 80 * GB, compute_efficiency=0.65,
                         memory_efficiency=0.88, interconnect_bandwidth=450 * GB),
    "h200": HardwareSpec("h200", 989 * TB, 4.8 * TB, 141 * GB, compute_efficiency=0.65,
                         memory_efficiency=0.88, interconnect_bandwidth=450 * GB),
}


def load_hardware(name_or_path: str) -> HardwareSpec:
    """A preset name or a JSON file with HardwareSpec's fields (SI units: FLOP/s, bytes/s, bytes)."""
    if name_or_path in PRESETS:
        return dataclasses.replace(PRESETS[name_or_path])
    if not os.path.isfile(name_or_path):
        raise ValueError(f"unknown hardware {name_or_path!r} (presets: {', '.join(PRESETS)}, "
                         "a hardware JSON file or a profile from `banaserve profile`)")
    try:
        with open(name_or_path) as f:
            doc = json.load(f)
    except (OSError, json.JSONDecodeError) as e:
        raise ValueError(f"cannot read hardware file {name_or_path}: {e}") from None
    return hardware_from_dict(doc, name_or_path)


def hardware_from_dict(doc: object, where: str) -> HardwareSpec:
    if not isinstance(doc, dict):
        raise ValueError(f"hardware file {where} is not a JSON object")
    fields = {f.name for f in dataclasses.fields(HardwareSpec)}
    unknown = sorted(set(doc) - fields)
    if unknown:
        raise ValueError(f"hardware file {where}: unknown fields {', '.join(unknown)}")
    doc = {"name": os.path.basename(where), **doc}
    try:
        spec = HardwareSpec(**doc)
        for f in dataclasses.fields(HardwareSpec):
            if f.name != "name":
                setattr(spec, f.name, float(getattr(spec, f.name)))
    except TypeError as e:
        raise ValueError(f"hardware file {where}: {e}") from None
    except ValueError:
        raise ValueError(f"hardware file {where}: fields must be numbers") from None
    spec.validate()
    return spec
