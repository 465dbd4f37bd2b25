import json

import pytest

from banaserve.sim.hardware import PRESETS, load_hardware


def test_presets_datasheet_numbers():
    a100, h100, h200 = (load_hardware(n) for n in ("a100-80g", "h100", "h200"))
    assert (a100.peak_flops, a100.hbm_bandwidth, a100.memory_bytes) == (312e12, 2.0e12, 80e9)
    assert (h100.peak_flops, h100.hbm_bandwidth, h100.memory_bytes) == (989e12, 3.35e12, 80e9)
    assert (h200.peak_flops, h200.hbm_bandwidth, h200.memory_bytes) == (989e12, 4.8e12, 141e9)
    for spec in PRESETS.values():
        spec.validate()


def test_load_from_file(tmp_path):
    path = tmp_path / "gpu.json"
    path.write_text(json.dumps({"peak_flops": 100e12, "hbm_bandwidth": 1e12, "memory_bytes": 24e9,
                                "compute_efficiency": 0.5}))
    hw = load_hardware(str(path))
    assert hw.peak_flops == 100e12 and hw.compute_efficiency == 0.5 and hw.name == "gpu.json"


@pytest.mark.parametrize("doc, match", [
    ({"peak_flops": 1e12}, "missing"),
    ({"peak_flops": 1e12, "hbm_bandwidth": 1e12, "memory_bytes": 1e9, "typo": 1}, "unknown fields typo"),
    ({"peak_flops": 1e12, "hbm_bandwidth": 1e12, "memory_bytes": 1e9, "memory_efficiency": 2}, r"\(0, 1\]"),
    ({"peak_flops": "fast", "hbm_bandwidth": 1e12, "memory_bytes": 1e9}, "numbers"),
    ([1, 2], "not a JSON object"),
])
def test_bad_files(tmp_path, doc, match):
    path = tmp_path / "gpu.json"
    path.write_text(json.dumps(doc))
    with pytest.raises(ValueError, match=match):
        load_hardware(str(path))


def test_unknown_name():
    with pytest.raises(ValueError, match="unknown hardware"):
        load_hardware("tpu-v9")
