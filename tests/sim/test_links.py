import pytest

from banaserve.sim.links import Link


def brute_force_layerwise(free_at, start, end, nbytes, layers, bandwidth):
    """Per-layer FIFO replay: layer l ready at start + (l+1)*dt, each share sent in turn."""
    t = free_at
    dt = (end - start) / layers
    for layer in range(layers):
        t = max(t, start + (layer + 1) * dt) + nbytes / layers / bandwidth
    return t


def test_send_queues_fifo():
    link = Link(bandwidth=1e9, latency_s=0.001)
    assert link.send(0.0, 10**9) == pytest.approx(1.001)
    assert link.send(0.5, 10**9) == pytest.approx(2.001)  # waits for the first
    assert link.send(5.0, 0) == pytest.approx(5.001)
    assert link.bytes_sent == 2 * 10**9


@pytest.mark.parametrize("nbytes", [10**6, 10**8, 10**9, 10**10])
@pytest.mark.parametrize("free_at", [0.0, 0.5, 3.0])
def test_layerwise_push_matches_per_layer_replay(nbytes, free_at):
    link = Link(bandwidth=1e9, free_at=free_at)
    got = link.push_layerwise(1.0, 2.0, nbytes, 40)
    want = brute_force_layerwise(free_at, 1.0, 2.0, nbytes, 40, 1e9)
    assert got == pytest.approx(want, rel=1e-12)


def test_layerwise_overlap_hides_all_but_the_last_layer():
    link = Link(bandwidth=1e9)
    # 40 layers, 0.4 GB over 1 s of compute: the link keeps up, only the last layer's 10 ms is left
    assert link.push_layerwise(0.0, 1.0, 4 * 10**8, 40) == pytest.approx(1.01)


def test_bad_links():
    with pytest.raises(ValueError):
        Link(bandwidth=0)
    with pytest.raises(ValueError):
        Link(bandwidth=1, latency_s=-1)
