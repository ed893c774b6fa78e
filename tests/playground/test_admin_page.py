"""The playground's admin page (`GET /admin`) in a real headless Chromium, against the real
`gateway serve` with a SQLite key database: keys, their limits and usage; create, block,
rotate and revoke through the page."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest
from playwright.sync_api import Browser, Page, expect, sync_playwright

from tests.support.fake_upstream import FakeUpstream
from tests.support.gateway_proc import ADMIN_KEY, KEY_A, GatewayProcess, test_config

from .test_playground import CHROMIUM, CHROMIUM_ARGS

pytestmark = pytest.mark.browser


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    if not CHROMIUM.exists():
        pytest.fail(f"{CHROMIUM} is missing: apt-get install chromium", pytrace=False)
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        yield browser
        browser.close()


@pytest.fixture(scope="module")
def gateway(
    upstream: FakeUpstream, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[GatewayProcess]:
    tmp = tmp_path_factory.mktemp("admin-page")
    config = test_config(upstream.url, database_url=f"sqlite:///{tmp}/keys.db")
    with GatewayProcess(config, tmp) as proc:
        yield proc


@pytest.fixture
def page(browser: Browser, gateway: GatewayProcess) -> Iterator[Page]:
    context = browser.new_context(viewport={"width": 1400, "height": 900})
    page = context.new_page()
    problems: list[str] = []
    page.on("pageerror", lambda exc: problems.append(f"uncaught: {exc}"))
    page.on(
        "console",
        lambda msg: problems.append(msg.text) if "Content Security Policy" in msg.text else None,
    )
    page.goto(gateway.url + "/admin")
    page.fill("#admin-key", ADMIN_KEY)
    yield page
    context.close()
    assert not problems, problems


def test_the_page_lists_keys_with_their_limits_and_usage(
    page: Page, gateway: GatewayProcess
) -> None:
    # Some usage for a config key: one request this minute.
    body = {"model": "gpt-test", "messages": [{"role": "user", "content": "hi"}]}
    response = httpx.post(
        gateway.url + "/v1/chat/completions", headers={"x-api-key": KEY_A}, json=body, timeout=30
    )
    assert response.status_code == 200
    page.click("#load")
    team_a = page.locator('#keys tr[data-id="team-a"]')
    expect(team_a).to_contain_text("config")
    expect(team_a.locator("td").nth(9)).to_have_text("1")  # requests this minute
    expect(page.locator('#keys tr[data-id="team-b"]')).to_contain_text("gpt-test")


def test_create_block_rotate_and_revoke_from_the_page(page: Page, gateway: GatewayProcess) -> None:
    page.fill("#new-id", "from-the-page")
    page.fill("#new-models", "gpt-test")
    page.fill("#new-rpm", "30")
    page.click("#create")
    secret_box = page.locator("#secret")
    expect(secret_box).to_contain_text("sk-gw-")
    secret = secret_box.inner_text().rsplit(": ", 1)[1].strip()
    new_row = page.locator('#keys tr[data-id="from-the-page"]')
    expect(new_row).to_contain_text("active")
    expect(new_row.locator("td").nth(4)).to_have_text("30")
    auth = {"authorization": f"Bearer {secret}"}
    assert httpx.get(gateway.url + "/v1/models", headers=auth).status_code == 200
    # The secret is in the answer that created it, and nowhere in the list.
    listed = httpx.get(
        gateway.url + "/admin/keys", headers={"authorization": f"Bearer {ADMIN_KEY}"}
    ).text
    assert secret not in listed

    new_row.get_by_role("button", name="Block").click()
    expect(new_row).to_contain_text("blocked")
    assert httpx.get(gateway.url + "/v1/models", headers=auth).status_code == 401
    new_row.get_by_role("button", name="Unblock").click()
    expect(new_row.locator("td").nth(2)).to_have_text("active")

    new_row.get_by_role("button", name="Rotate").click()
    expect(secret_box).to_contain_text("one more hour")
    rotated = secret_box.inner_text().rsplit(": ", 1)[1].strip()
    assert rotated != secret
    new_auth = {"authorization": f"Bearer {rotated}"}
    assert httpx.get(gateway.url + "/v1/models", headers=new_auth).status_code == 200
    assert httpx.get(gateway.url + "/v1/models", headers=auth).status_code == 200  # grace

    new_row.get_by_role("button", name="Revoke").click()
    expect(new_row).to_contain_text("revoked")
    for headers in (auth, new_auth):
        assert httpx.get(gateway.url + "/v1/models", headers=headers).status_code == 401


def test_a_wrong_admin_key_is_shown_in_words(page: Page) -> None:
    page.fill("#admin-key", "not-the-admin-key")
    page.click("#load")
    expect(page.locator("#message")).to_contain_text("401")
    expect(page.locator("#keys tr")).to_have_count(0)
