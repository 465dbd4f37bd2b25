"""Sanity of the roofline cost model against first-principles numbers.

    python benchmarks/sim_physics.py

Decode at batch 1 must be bound by streaming the weights (weight bytes / HBM bandwidth); a long
prefill by compute (FLOPs / (peak * compute efficiency)). Prints each ratio; the last line is the
headline. tests/sim/test_cost_model.py asserts the 20% bounds.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from banaserve.sim.cost_model import BatchShape, RooflineCostModel  # noqa: E402
from banaserve.sim.hardware import load_hardware  # noqa: E402
from banaserve.sim.model_configs import load_sim_model  # noqa: E402


def main() -> int:
    rows = []
    for model_name, hw_name in (("llama2-13b", "a100-80g"), ("llama2-7b", "a100-80g"), ("llama3-8b", "h100"),
                                ("qwen2.5-14b", "h200")):
        model, hw = load_sim_model(model_name), load_hardware(hw_name)
        cost = RooflineCostModel(model, hw)
        decode = cost.step_time(BatchShape(decode_seqs=1, decode_ctx=512, decode_max_ctx=512, sampled=1))
        ideal_decode = model.weight_bytes() / hw.hbm_bandwidth
        n = 2048
        prefill = cost.step_time(BatchShape(prefill_tokens=n, prefill_seqs=1, prefill_pairs=n * (n + 1) // 2,
                                            prefill_ctx=n, prefill_max_tokens=n, sampled=1))
        dense = model.config.num_params() - model.config.embedding_params()
        flops = 2 * n * dense + 4 * model.config.num_layers * model.config.hidden_size * n * (n + 1) / 2
        ideal_prefill = flops / (hw.peak_flops * hw.compute_efficiency)
        rows.append((model_name, hw_name, decode, ideal_decode, prefill, ideal_prefill))
        print(f"{model_name:<12} {hw_name:<9} decode b=1 {1e3 * decode:7.2f} ms vs weights/BW "
              f"{1e3 * ideal_decode:7.2f} ms ({decode / ideal_decode:.3f}x); "
              f"prefill {n} {1e3 * prefill:7.1f} ms vs FLOPs/(peak*{hw.compute_efficiency:g}) "
              f"{1e3 * ideal_prefill:7.1f} ms ({prefill / ideal_prefill:.3f}x)")
    m, h, d, di, p, pi = rows[0]
    print(f"physics: {m} on {h}: decode {d / di:.3f}x weight-bytes/HBM-BW, prefill-2048 {p / pi:.3f}x "
          "FLOPs/(peak*efficiency) (bounds: within 1.2x)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
