"""The admin API's answers that need no database: a gateway without `database_url` lists
and shows its config keys and refuses writes; the admin key guards every route."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from starlette.testclient import TestClient

from gateway.app import create_app
from gateway.config import hash_key, parse_config

ADMIN = "sk-admin-for-tests"


def config(**extra: object) -> dict[str, object]:
    return {
        "providers": [{"name": "p", "type": "mock"}],
        "models": [{"name": "m", "provider": "p"}],
        "keys": [{"id": "a", "key_sha256": hash_key("sk-a"), "limits": {"rpm": 5}}],
        **extra,
    }


@pytest.fixture
def client() -> Iterator[TestClient]:
    app = create_app(parse_config(config(admin_key_sha256=hash_key(ADMIN)), "t.yaml", {}))
    with TestClient(app, headers={"authorization": f"Bearer {ADMIN}"}) as client:
        yield client


def test_without_a_database_config_keys_are_listed_and_writes_refused(client: TestClient) -> None:
    listed = client.get("/admin/keys").json()["data"]
    assert [(k["id"], k["source"], k["limits"]["rpm"]) for k in listed] == [("a", "config", 5)]
    assert client.get("/admin/keys/a").json()["source"] == "config"
    assert client.get("/admin/keys/nope").status_code == 404
    assert client.patch("/admin/keys/a", json={"blocked": True}).status_code == 409
    created = client.post("/admin/keys", json={"id": "b"})
    assert created.status_code == 404
    assert "database_url" in created.json()["error"]["message"]


def test_every_admin_route_needs_the_admin_key(client: TestClient) -> None:
    for method, path in (
        ("GET", "/admin/keys"),
        ("GET", "/admin/keys/a"),
        ("POST", "/admin/keys"),
        ("PATCH", "/admin/keys/a"),
        ("DELETE", "/admin/keys/a"),
        ("POST", "/admin/keys/a/rotate"),
    ):
        for key in ("", "sk-a", "wrong"):
            response = client.request(method, path, headers={"authorization": f"Bearer {key}"})
            assert response.status_code == 401, (method, path, key)
            assert response.json()["error"]["code"] == "invalid_api_key"


def test_admin_routes_are_off_without_an_admin_key() -> None:
    app = create_app(parse_config(config(), "t.yaml", {}))
    with TestClient(app) as client:
        response = client.get("/admin/keys", headers={"authorization": "Bearer anything"})
    assert response.status_code == 404


def test_the_admin_page_runs_under_a_nonce_csp(client: TestClient) -> None:
    page = client.get("/admin")
    assert page.status_code == 200
    csp = page.headers["content-security-policy"]
    nonce = csp.split("'nonce-", 1)[1].split("'", 1)[0]
    assert f'<script nonce="{nonce}">' in page.text
    assert "__CSP_NONCE__" not in page.text
