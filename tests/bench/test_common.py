import socket

import pytest

from simpsonize.bench.common import REPO_ROOT, ServeExited, free_port, percentile, serve_env, serving


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


def test_serve_env_leaves_out_redis_url_and_this_shells_settings(monkeypatch, tmp_path):
    monkeypatch.setenv("REDIS_URL", "redis://elsewhere:6379/0")
    monkeypatch.setenv("SIMPSONIZE_MAX_QUEUE", "3")
    env = serve_env(tmp_path, SIMPSONIZE_RATE_LIMIT="off")
    assert "REDIS_URL" not in env and "SIMPSONIZE_MAX_QUEUE" not in env
    assert env["PYTHONPATH"] == str(tmp_path) and env["SIMPSONIZE_RATE_LIMIT"] == "off"
    kept = serve_env(inherit=True)
    assert "REDIS_URL" not in kept and kept["SIMPSONIZE_MAX_QUEUE"] == "3" and kept["PYTHONPATH"] == str(REPO_ROOT)


def test_serving_says_what_serve_wrote_when_it_exits_before_answering(tmp_path):
    missing = tmp_path / "missing.safetensors"
    with pytest.raises(ServeExited, match="exited with code 2") as raised:
        with serving("--weights", str(missing), "--data-dir", str(tmp_path / "data")):
            pytest.fail("serve answered without its weights")
    assert "missing.safetensors does not exist" in str(raised.value)
