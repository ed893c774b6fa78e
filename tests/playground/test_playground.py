"""The playground page (`GET /`) in a real headless Chromium, against the real `gateway serve`.

Two gateways: the embedded default (mock provider, demo key) as a new user runs it, and one
configured in front of the fake provider, for the scripted cases (a paced stream to stop, a
mid-stream error, tool calls) and to see the upstream side of a Stop.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from playwright.sync_api import Browser, Page, Route, expect, sync_playwright

from gateway.config import DEMO_KEY
from tests.support.fake_upstream import FakeUpstream, Seen
from tests.support.gateway_proc import KEY_A, GatewayProcess, test_config

pytestmark = pytest.mark.browser

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless=new",
    "--no-sandbox",  # required when the tests run as root (containers, CI)
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    if not CHROMIUM.exists():
        pytest.fail(
            f"{CHROMIUM} is missing: the playground tests need Debian's chromium "
            "(apt-get install chromium); Playwright's own browser download is not used"
        )
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        yield browser
        browser.close()


@pytest.fixture(scope="module")
def demo_gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayProcess]:
    """`gateway serve` with no config: the embedded default a new user starts."""
    with GatewayProcess(None, tmp_path_factory.mktemp("playground-demo")) as proc:
        yield proc


@pytest.fixture(scope="module")
def fake_gateway(
    upstream: FakeUpstream, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[GatewayProcess]:
    tmp = tmp_path_factory.mktemp("playground-fake")
    with GatewayProcess(test_config(upstream.url), tmp) as proc:
        yield proc


@pytest.fixture
def page(browser: Browser) -> Iterator[Page]:
    """A fresh context per test (empty localStorage); uncaught page errors fail the test."""
    context = browser.new_context(viewport={"width": 1200, "height": 820})
    page = context.new_page()
    problems: list[str] = []
    page.on("pageerror", lambda exc: problems.append(f"uncaught: {exc}"))
    page.on(
        "console",
        lambda msg: problems.append(msg.text) if "Content Security Policy" in msg.text else None,
    )
    yield page
    context.close()
    assert not problems, problems


def output_length(page: Page) -> int:
    return int(page.evaluate("document.getElementById('output').textContent.length"))


def open_with_key(page: Page, gateway: GatewayProcess, key: str, model: str) -> None:
    page.goto(gateway.url + "/")
    page.fill("#api-key", key)
    expect(page.locator(f'#model option[value="{model}"]')).to_have_count(1)
    page.select_option("#model", model)


def stream_for(upstream: FakeUpstream, upstream_model: str, after: int) -> Seen | None:
    """The fake provider's record of the streamed request for this model, if it came yet."""
    for seen in upstream.seen[after:]:
        if seen.body.get("model") == upstream_model and seen.body.get("stream"):
            return seen
    return None


def test_page_loads_with_demo_key_and_models(page: Page, demo_gateway: GatewayProcess) -> None:
    requested: list[str] = []
    page.on("request", lambda req: requested.append(req.url))
    response = page.goto(demo_gateway.url + "/")
    assert response is not None and response.ok
    assert "text/html" in response.headers["content-type"]
    expect(page).to_have_title("Gateway playground")
    expect(page.locator("#api-key")).to_have_value(DEMO_KEY)
    expect(page.locator('#model option[value="mock-gpt"]')).to_have_count(1)
    expect(page.locator("#model")).to_have_value("mock-gpt")
    expect(page.locator("#key-status")).to_contain_text("available to this key")
    for field in ("#system", "#prompt", "#temperature", "#max-tokens"):
        expect(page.locator(field)).to_be_visible()
    expect(page.locator("#send")).to_be_enabled()
    expect(page.locator("#stop")).to_be_disabled()
    expect(page.locator("#output")).to_have_attribute("aria-live", "polite")
    # Self-contained: nothing but the gateway itself is asked for anything.
    assert requested and all(url.startswith(demo_gateway.url + "/") for url in requested), requested


def test_edited_key_persists_across_reloads(page: Page, demo_gateway: GatewayProcess) -> None:
    page.goto(demo_gateway.url + "/")
    expect(page.locator("#api-key")).to_have_value(DEMO_KEY)
    page.fill("#api-key", "sk-my-own-key")
    page.reload()
    expect(page.locator("#api-key")).to_have_value("sk-my-own-key")


def test_key_is_not_prefilled_outside_the_embedded_default(
    page: Page, fake_gateway: GatewayProcess
) -> None:
    page.goto(fake_gateway.url + "/")
    expect(page.locator("#api-key")).to_have_value("")
    expect(page.locator("#key-status")).to_contain_text("Enter an API key")
    assert DEMO_KEY not in page.content()


def test_send_streams_the_reply_as_it_arrives(
    page: Page, demo_gateway: GatewayProcess, tmp_path: Path
) -> None:
    bodies: list[dict[str, object]] = []
    page.on(
        "request",
        lambda req: (
            bodies.append(req.post_data_json) if req.url.endswith("/chat/completions") else None
        ),
    )
    page.goto(demo_gateway.url + "/")
    expect(page.locator("#model")).to_have_value("mock-gpt")
    page.fill("#system", "Be brief.")
    page.fill("#prompt", "Why does streaming matter?")
    page.click("#send")

    shot = tmp_path / "playground-midstream.png"
    lengths: list[int] = []
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        state = page.evaluate(
            "({len: document.getElementById('output').textContent.length,"
            " busy: document.getElementById('output').getAttribute('aria-busy')})"
        )
        if state["busy"] != "true":
            break
        if not lengths or state["len"] != lengths[-1]:
            lengths.append(state["len"])
        if not shot.exists() and state["len"] > 80:
            page.screenshot(path=str(shot), full_page=True)
        time.sleep(0.04)
    growth = [n for n in lengths if n > 0]
    # The mock sends 60 tokens 25 ms apart: the text must grow in many visible steps while
    # the stream is open, not land all at once at the end.
    assert len(growth) >= 3, lengths
    assert growth == sorted(growth), lengths
    assert shot.exists(), "no screenshot taken mid-stream"
    print(
        f"\nmid-stream screenshot: {shot} -- the playground with the demo key and mock-gpt "
        "selected, the prompt filled in, Stop enabled and the reply partly streamed"
    )

    expect(page.locator("#status-text")).to_contain_text("Done", timeout=10_000)
    final = output_length(page)
    assert final >= growth[-1]
    assert len((page.locator("#output").text_content() or "").split()) == 60
    expect(page.locator("#error")).to_be_hidden()
    expect(page.locator("#stats")).to_be_visible()
    ttft = page.locator("#stat-ttft").inner_text()
    match = re.fullmatch(r"(\d+) ms|(\d+\.\d+) s", ttft)
    assert match, ttft
    ttft_ms = int(match.group(1)) if match.group(1) else float(match.group(2)) * 1000
    assert 150 <= ttft_ms < 5000, ttft  # the mock's first token comes after 250 ms
    prompt = int(page.locator("#stat-prompt").inner_text())
    completion = int(page.locator("#stat-completion").inner_text())
    assert completion == 60
    assert int(page.locator("#stat-total").inner_text()) == prompt + completion
    tps = float(page.locator("#stat-tps").inner_text())
    assert 5 < tps < 400, tps  # 60 tokens over ~1.5 s of streaming
    expect(page.locator("#stat-finish")).to_have_text("stop")
    expect(page.locator("#send")).to_be_enabled()
    expect(page.locator("#stop")).to_be_disabled()

    assert len(bodies) == 1
    body = bodies[0]
    assert body["stream"] is True
    assert body["stream_options"] == {"include_usage": True}
    assert body["model"] == "mock-gpt"
    assert body["temperature"] == 0.7
    assert "max_tokens" not in body
    assert body["messages"] == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Why does streaming matter?"},
    ]


def test_bad_key_shows_the_gateways_refusal(page: Page, demo_gateway: GatewayProcess) -> None:
    page.goto(demo_gateway.url + "/")
    expect(page.locator("#model")).to_have_value("mock-gpt")
    page.fill("#api-key", "sk-not-a-real-key")
    expect(page.locator("#key-status")).to_contain_text("refused the API key")
    page.click("#send")
    error = page.locator("#error")
    expect(error).to_be_visible()
    expect(error).to_contain_text("The gateway refused the API key (HTTP 401)")
    expect(error).to_contain_text("Incorrect API key provided.")
    expect(page.locator("#output")).to_have_text("")
    # Fixing the key brings the model list back, on the model picked before.
    page.fill("#api-key", DEMO_KEY)
    expect(page.locator("#key-status")).to_contain_text("available to this key")
    expect(page.locator("#model")).to_have_value("mock-gpt")


def test_stop_aborts_the_stream_and_the_upstream_request(
    page: Page, fake_gateway: GatewayProcess, upstream: FakeUpstream
) -> None:
    open_with_key(page, fake_gateway, KEY_A, "gpt-paced")
    before = len(upstream.seen)
    page.click("#send")
    expect(page.locator("#output")).to_contain_text("tok3")
    page.click("#stop")
    stopped_at = time.monotonic()
    expect(page.locator("#status-text")).to_contain_text("Stopped")
    length = output_length(page)
    # 40 tokens 50 ms apart: the fake provider sees the gateway hang up within ~1.5 s.
    assert upstream.wait_for(
        lambda: (
            (s := stream_for(upstream, "text?n=40&pace_ms=50", before)) is not None
            and s.disconnected
        ),
        timeout=1.5,
    ), "the upstream request was not cancelled after Stop"
    assert time.monotonic() - stopped_at < 2.0
    seen = stream_for(upstream, "text?n=40&pace_ms=50", before)
    assert seen is not None and seen.chunks_sent < 40
    time.sleep(0.3)
    assert output_length(page) == length, "text kept arriving after Stop"
    assert 0 < length < len("".join(f"tok{i} " for i in range(40)))
    expect(page.locator("#error")).to_be_hidden()
    expect(page.locator("#send")).to_be_enabled()
    expect(page.locator("#stop")).to_be_disabled()
    expect(page.locator("#stat-ttft")).to_have_text(re.compile(r"\d"))


def test_midstream_error_keeps_the_text_and_shows_a_banner(
    page: Page, fake_gateway: GatewayProcess
) -> None:
    open_with_key(page, fake_gateway, KEY_A, "gpt-midstream")
    page.click("#send")
    error = page.locator("#error")
    expect(error).to_be_visible()
    expect(error).to_contain_text("The stream broke off with an error")
    expect(error).to_contain_text("fake provider exploded")
    expect(page.locator("#output")).to_have_text("tok0 tok1 tok2 tok3 tok4 ")
    expect(page.locator("#status-text")).to_contain_text("Failed mid-stream")


def test_tool_call_deltas_are_shown_readably(page: Page, fake_gateway: GatewayProcess) -> None:
    open_with_key(page, fake_gateway, KEY_A, "gpt-tools")
    page.click("#send")
    expect(page.locator("#status-text")).to_contain_text("Done")
    call = page.locator("#output .tool-call")
    expect(call).to_have_count(1)
    text = call.inner_text()
    assert text.startswith("Tool call get_weather(")
    args = json.loads(text[len("Tool call get_weather(") : -1])
    assert args["city"] == "Paris"
    expect(page.locator("#stat-finish")).to_have_text("tool_calls")


def test_rate_limit_shows_when_to_retry(page: Page, demo_gateway: GatewayProcess) -> None:
    # The real 429 path is covered by the limits tests; here only the page's wording.
    error = {
        "error": {
            "message": "Rate limit reached for requests.",
            "type": "rate_limit_error",
            "param": None,
            "code": "rate_limit_exceeded",
        }
    }

    def refuse(route: Route) -> None:
        route.fulfill(status=429, headers={"retry-after": "7"}, json=error)

    page.route("**/v1/chat/completions", refuse)
    page.goto(demo_gateway.url + "/")
    expect(page.locator("#model")).to_have_value("mock-gpt")
    page.click("#send")
    expect(page.locator("#error")).to_contain_text("Rate limit reached for requests.")
    expect(page.locator("#error")).to_contain_text("Retry after 7 s.")


def test_other_http_errors_show_status_and_message(
    page: Page, fake_gateway: GatewayProcess
) -> None:
    open_with_key(page, fake_gateway, KEY_A, "gpt-500")
    page.click("#send")
    error = page.locator("#error")
    expect(error).to_contain_text(re.compile(r"HTTP 5\d\d"))
    expect(error).to_contain_text("fake 500")


def test_network_failure_is_explained(page: Page, demo_gateway: GatewayProcess) -> None:
    page.goto(demo_gateway.url + "/")
    expect(page.locator("#model")).to_have_value("mock-gpt")
    page.route("**/v1/chat/completions", lambda route: route.abort("connectionrefused"))
    page.click("#send")
    expect(page.locator("#error")).to_contain_text("Could not reach the gateway.")
    expect(page.locator("#error")).to_contain_text("Is the gateway running?")


def test_sse_parser_handles_split_events_crlf_and_comments(
    page: Page, demo_gateway: GatewayProcess
) -> None:
    page.goto(demo_gateway.url + "/")
    events = page.evaluate(
        """() => {
            const seen = [];
            const p = window.gatewayPlayground.createSseParser((ev) => seen.push(ev));
            const chunks = [
                ": keep-alive\\n\\n",
                "data: {\\"a\\"", ":1}\\n", "\\n",          // one event over three reads
                "data: x\\r\\n\\r", "\\n",                  // CRLF, split inside the "\\r\\n"
                "event: note\\r\\ndata: line1\\r\\ndata: line2\\r\\n\\r\\n",
                ": keep-alive\\r\\n\\r\\ndata: y\\n\\ndata: z\\n\\n",  // several in one read
                "data: [DONE]",                            // no blank line before the end
            ];
            for (const c of chunks) p.feed(c);
            p.end();
            return seen;
        }"""
    )
    assert events == [
        {"event": "message", "data": '{"a":1}'},
        {"event": "message", "data": "x"},
        {"event": "note", "data": "line1\nline2"},
        {"event": "message", "data": "y"},
        {"event": "message", "data": "z"},
        {"event": "message", "data": "[DONE]"},
    ]


def test_crlf_stream_with_keepalives_renders(page: Page, demo_gateway: GatewayProcess) -> None:
    def chunk(content: str) -> str:
        delta = {
            "id": "c",
            "object": "chat.completion.chunk",
            "created": 1,
            "model": "mock-gpt",
            "choices": [{"index": 0, "delta": {"content": content}, "finish_reason": None}],
        }
        return "data: " + json.dumps(delta) + "\r\n\r\n"

    usage = {
        "id": "c",
        "object": "chat.completion.chunk",
        "created": 1,
        "model": "mock-gpt",
        "choices": [],
        "usage": {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5},
    }
    keepalive, usage_event = ": keep-alive\r\n\r\n", f"data: {json.dumps(usage)}\r\n\r\n"
    body = keepalive + chunk("Hello,") + keepalive + chunk(" world") + usage_event
    body += "data: [DONE]\r\n\r\n"

    def serve(route: Route) -> None:
        route.fulfill(status=200, headers={"content-type": "text/event-stream"}, body=body)

    page.route("**/v1/chat/completions", serve)
    page.goto(demo_gateway.url + "/")
    expect(page.locator("#model")).to_have_value("mock-gpt")
    page.click("#send")
    expect(page.locator("#status-text")).to_contain_text("Done")
    expect(page.locator("#output")).to_have_text("Hello, world")
    expect(page.locator("#stat-total")).to_have_text("5")


@pytest.mark.parametrize(
    ("api", "path", "finish"),
    [("responses", "/v1/responses", "completed"), ("messages", "/v1/messages", "end_turn")],
)
def test_the_api_switch_streams_on_each_api(
    page: Page, demo_gateway: GatewayProcess, api: str, path: str, finish: str
) -> None:
    bodies: list[dict[str, object]] = []
    page.on(
        "request", lambda req: bodies.append(req.post_data_json) if req.url.endswith(path) else None
    )
    page.goto(demo_gateway.url + "/")
    expect(page.locator("#model")).to_have_value("mock-gpt")
    page.select_option("#api", api)
    page.fill("#system", "Be brief.")
    page.click("#send")
    expect(page.locator("#status-text")).to_contain_text("Done", timeout=10_000)
    assert len((page.locator("#output").text_content() or "").split()) == 60
    expect(page.locator("#error")).to_be_hidden()
    assert int(page.locator("#stat-completion").inner_text()) == 60
    prompt = int(page.locator("#stat-prompt").inner_text())
    assert int(page.locator("#stat-total").inner_text()) == prompt + 60
    expect(page.locator("#stat-finish")).to_have_text(finish)
    assert len(bodies) == 1
    body = bodies[0]
    if api == "responses":
        assert body["instructions"] == "Be brief."
    else:
        assert body["system"] == "Be brief." and body["max_tokens"] == 1024
    page.reload()
    expect(page.locator("#api")).to_have_value(api)  # the choice is kept


@pytest.mark.parametrize("api", ["responses", "messages"])
def test_tools_and_midstream_errors_on_each_api(
    page: Page, fake_gateway: GatewayProcess, api: str
) -> None:
    open_with_key(page, fake_gateway, KEY_A, "gpt-tools")
    page.select_option("#api", api)
    page.click("#send")
    expect(page.locator("#status-text")).to_contain_text("Done")
    call = page.locator("#output .tool-call")
    expect(call).to_have_count(1)
    text = call.inner_text()
    assert text.startswith("Tool call get_weather(")
    assert json.loads(text[len("Tool call get_weather(") : -1])["city"] == "Paris"
    page.select_option("#model", "gpt-midstream")
    page.click("#send")
    expect(page.locator("#error")).to_contain_text("The stream broke off with an error")
    expect(page.locator("#output")).to_have_text("tok0 tok1 tok2 tok3 tok4 ")
    expect(page.locator("#status-text")).to_contain_text("Failed mid-stream")
