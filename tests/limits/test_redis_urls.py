"""`redis_url`: what is accepted, and everything else refused at start-up with one line
(an option the client would ignore, Sentinel, a Cluster URL with a database); and readiness
that runs the admission path, not just PING."""

from __future__ import annotations

from pathlib import Path

import pytest
import redis

from gateway.config import ConfigError, hash_key, parse_config
from gateway.limits.cluster import ClusterAddress, ClusterClient
from gateway.limits.redis_store import RedisLimiter
from gateway.limits.resp import Address
from tests.limits.limits_support import run_with, running
from tests.support.fake_upstream import FakeUpstream
from tests.support.gateway_proc import GatewayProcess, test_config


def _config(redis_url: str) -> dict[str, object]:
    return {
        "providers": [{"name": "p", "type": "openai", "base_url": "http://x/v1", "api_key": "k"}],
        "models": [{"name": "m", "provider": "p"}],
        "keys": [{"id": "a", "key_sha256": hash_key("secret")}],
        "redis_url": redis_url,
    }


@pytest.mark.parametrize(
    "url",
    [
        "redis://:pw@h:6380/2",
        "redis://h?db=3",
        "rediss://h?ssl_ca_certs=/etc/ca.pem",
        "unix:///run/redis.sock?db=1",
        "redis+cluster://h1:7000,h2:7001",
        "rediss+cluster://user:pw@h1:7000?ssl_ca_certs=/etc/ca.pem",
    ],
)
def test_urls_the_client_implements_are_accepted(url: str) -> None:
    assert parse_config(_config(url), "gw.yaml", {}).redis_url == url


@pytest.mark.parametrize(
    ("url", "words"),
    [
        ("redis://h?socket_timeout=5", "option 'socket_timeout' is not supported"),
        ("redis://h?decode_responses=", "option 'decode_responses' is not supported"),
        ("redis://h?ssl_ca_certs=/ca.pem", "ssl_ca_certs needs TLS: use rediss://"),
        ("redis+sentinel://:pw@s1:26379/mymaster", "Sentinel is not supported"),
        ("redis+cluster://h:7000?db=1", "option 'db' is not supported with a Cluster"),
        ("redis+cluster://h:7000/2", "a Redis Cluster has only database 0"),
        ("redis+cluster://h:port", "port 'port' is not a number"),
    ],
)
def test_anything_else_is_one_clear_line_without_the_url(url: str, words: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_config(_config(url), "gw.yaml", {})
    message = str(info.value)
    assert message.startswith("gw.yaml: redis_url: ") and words in message
    assert "\n" not in message and "pw" not in message


def test_cluster_seeds_and_credentials() -> None:
    address = ClusterAddress.from_url("rediss+cluster://us%3Aer:p%40ss@h1:7000,[::1]:7001,h3")
    assert address.seeds == (("h1", 7000), ("::1", 7001), ("h3", 6379))
    assert (address.username, address.password, address.tls) == ("us:er", "p@ss", True)


@pytest.mark.redis
def test_sentinel_stops_the_real_server_with_one_line(
    upstream: FakeUpstream, tmp_path: Path
) -> None:
    config = test_config(upstream.url, redis_url="redis+sentinel://:hunter2@s1:26379/mymaster")
    gateway = GatewayProcess(config, tmp_path)
    try:
        with pytest.raises(RuntimeError, match="gateway exited early") as info:
            gateway.start()
    finally:
        gateway.stop()
    (line,) = [ln for ln in str(info.value).splitlines() if "config error" in ln]
    assert "redis_url: Sentinel is not supported" in line and "hunter2" not in line


@pytest.mark.redis
def test_readiness_runs_the_admission_path_not_just_ping(redis_url: str) -> None:
    """A Redis that answers PING but may not run the limiter's scripts (EVALSHA denied by
    an ACL, as some managed offerings do) is not ready; before, readiness was a PING."""

    async def scenario() -> bool:
        limiter = RedisLimiter(redis_url, on_backend_error=lambda: None)
        async with running(limiter):
            return await limiter.ready()

    assert run_with(scenario())
    with redis.Redis.from_url(redis_url) as admin:
        admin.execute_command("ACL", "SETUSER", "default", "-evalsha")
        try:
            assert admin.ping()
            assert not run_with(scenario())
            # INFO denied instead (the plain-URL Cluster check): ready all the same.
            admin.execute_command("ACL", "SETUSER", "default", "+evalsha", "-info")
            assert run_with(scenario())
        finally:
            admin.execute_command("ACL", "SETUSER", "default", "+@all")


def test_a_cluster_masters_connection_keeps_the_credentials_and_tls() -> None:
    """The per-master RESP connections are opened with the Cluster URL's user, password
    (any characters) and TLS settings."""
    client = ClusterClient(
        "rediss+cluster://us%3Aer:p%40s%2Fs@h1:7000?ssl_ca_certs=/etc/my%20ca.pem", timeout=0.1
    )
    address = Address.from_url(client._node_url("10.0.0.7", 7002))
    assert (address.host, address.port, address.tls) == ("10.0.0.7", 7002, True)
    assert (address.username, address.password) == ("us:er", "p@s/s")
    assert address.ca_certs == "/etc/my ca.pem"
    plain = ClusterClient("redis+cluster://:secret@h1:7000", timeout=0.1)
    address = Address.from_url(plain._node_url("::1", 7003))
    assert (address.host, address.port, address.tls) == ("::1", 7003, False)
    assert (address.username, address.password) == (None, "secret")
