import socket

import pytest

from simpsonize.bench.common import free_port, percentile


def test_percentile_interpolates_between_the_nearest_ranks():
    # The two copies this replaced disagreed: the median of [1, 2, 3, 4] was 2 in one and 3 in the other.
    assert percentile([4.0, 1.0, 3.0, 2.0], 0.5) == pytest.approx(2.5)
    values = [0.1 * i for i in range(1, 21)]  # 0.1 .. 2.0
    assert percentile(values, 0.5) == pytest.approx(1.05)
    assert percentile(values, 0.95) == pytest.approx(1.905)
    assert percentile(values, 0.0) == pytest.approx(0.1) and percentile(values, 1.0) == pytest.approx(2.0)
    assert percentile([3.0], 0.95) == 3.0
    # any share, not only whole per-mille ones; close to the ends it stays inside the data
    assert percentile([0.0, 3.0], 1 / 3) == pytest.approx(1.0)
    assert percentile(values, 0.9999) == pytest.approx(1.99981)  # rank 18.9981 of 0..19
    assert percentile(values, 0.0001) == pytest.approx(0.10019)  # rank 0.0019
    assert percentile([], 0.5) is None


def test_free_port_can_be_bound():
    port = free_port()
    with socket.socket() as s:
        s.bind(("127.0.0.1", port))  # raises if another socket held it
    assert 1024 <= port <= 65535
