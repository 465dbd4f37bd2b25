"""Links that carry KV between instances: bandwidth, latency, one transfer at a time (FIFO)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(slots=True)
class Link:
    """A serial pipe (e.g. a prefill instance's NIC). Transfers queue behind each other."""

    bandwidth: float  # bytes/s
    latency_s: float = 0.0
    free_at: float = 0.0  # when the last queued byte has left
    bytes_sent: int = 0

    def __post_init__(self) -> None:
        if not self.bandwidth > 0:
            raise ValueError(f"link bandwidth must be > 0, got {self.bandwidth}")
        if self.latency_s < 0:
            raise ValueError(f"link latency must be >= 0, got {self.latency_s}")

    def send(self, ready: float, nbytes: int) -> float:
        """Send `nbytes` available at `ready`; returns when the last byte arrives."""
        start = max(self.free_at, ready)
        self.free_at = start + nbytes / self.bandwidth
        self.bytes_sent += nbytes
        return self.free_at + self.latency_s

    def push_layerwise(self, start: float, end: float, nbytes: int, num_layers: int) -> float:
        """Send KV computed layer by layer during [start, end); returns when the last byte arrives.

        Layer l's share (nbytes / num_layers) is pushed as soon as layer l finishes, at
        start + (l + 1) * (end - start) / num_layers, so the transfer overlaps the compute: only
        the last layer's share is left when compute ends if the link keeps up, else the link is
        the bottleneck from the first layer on. Exact for a FIFO link with equal layers.
        """
        xfer = nbytes / self.bandwidth
        first_ready = start + (end - start) / num_layers
        begin = max(self.free_at, first_ready)
        self.free_at = max(begin + xfer, end + xfer / num_layers)
        self.bytes_sent += nbytes
        return self.free_at + self.latency_s
