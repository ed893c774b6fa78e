"""The gateway's configuration: one frozen object, validated once at start-up.

The YAML file (config/example.yaml shows every key) is read here and nowhere else; so is the
environment (`${VAR}` / `${VAR:-default}` expansion, `GATEWAY_CONFIG`, `REDIS_URL`, the
egress proxy's `HTTPS_PROXY` / `HTTP_PROXY` / `NO_PROXY`, see `gateway.egress`). Every
mistake is refused with one `ConfigError` line that names the file, the path inside it and the fix.

Deliberately not here: hot reload. A changed config takes a restart (a rolling one behind
nginx or Kubernetes costs no stream, see the graceful shutdown in `gateway.server`).
"""

from __future__ import annotations

import datetime
import os
import re
from collections.abc import Mapping
from dataclasses import fields, replace
from functools import partial
from pathlib import Path
from typing import Any, get_args
from urllib.parse import urlsplit

import yaml

from gateway.config_reader import ConfigError as ConfigError  # callers catch it from here
from gateway.config_reader import (
    Reader,
    expand_tree,
    read_list,
    read_section,
    str_list,
)
from gateway.config_types import (
    DEMO_KEY as DEMO_KEY,
)
from gateway.config_types import (
    NANOS_PER_USD as NANOS_PER_USD,
)
from gateway.config_types import (
    AzureAuth as AzureAuth,
)
from gateway.config_types import (
    BackendFailure as BackendFailure,
)
from gateway.config_types import (
    Budget as Budget,
)
from gateway.config_types import (
    DeploymentConfig as DeploymentConfig,
)
from gateway.config_types import (
    GatewayConfig as GatewayConfig,
)
from gateway.config_types import (
    HealthConfig as HealthConfig,
)
from gateway.config_types import (
    KeyConfig as KeyConfig,
)
from gateway.config_types import (
    Limits as Limits,
)
from gateway.config_types import (
    LoggingConfig as LoggingConfig,
)
from gateway.config_types import (
    ModelConfig as ModelConfig,
)
from gateway.config_types import (
    ModelPrice as ModelPrice,
)
from gateway.config_types import (
    ProviderConfig as ProviderConfig,
)
from gateway.config_types import (  # what the config holds; re-exported
    ProviderType as ProviderType,
)
from gateway.config_types import (
    Routing as Routing,
)
from gateway.config_types import (
    Timeouts as Timeouts,
)
from gateway.config_types import (
    TracingConfig as TracingConfig,
)
from gateway.config_types import (
    Transport as Transport,
)
from gateway.config_types import (
    UpstreamPoolConfig as UpstreamPoolConfig,
)
from gateway.config_types import (
    hash_key as hash_key,
)
from gateway.egress import EgressProxies
from gateway.redis_url import validate as validate_redis_url


def embedded_default(redis_url: str = "", egress: EgressProxies | None = None) -> GatewayConfig:
    """No file, no keys, no Redis: the mock provider and one demo key."""
    return GatewayConfig(
        providers=(ProviderConfig(name="demo", type="mock"),),
        models=(
            ModelConfig(name="mock-gpt", provider="demo", upstream_model="mock-gpt"),
            ModelConfig(name="mock-embed", provider="demo", upstream_model="mock-embed"),
        ),
        keys=(
            KeyConfig(
                id="demo",
                key_sha256=hash_key(DEMO_KEY),
                limits=Limits(rpm=600, max_concurrent=20),
            ),
        ),
        redis_url=redis_url,
        egress=egress or EgressProxies(),
        source="<embedded default>",
        embedded_default=True,
    )


def _check_base_url(r: Reader, url: str) -> None:
    """http(s)://host[:port][/path], refused here rather than at the first request."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https"):
        fix = f"write https://{url}" if "://" not in url else "use http:// or https://"
        raise r.fail("base_url", f"{url!r} is not an http(s) URL: {fix}")
    try:
        parts.port  # noqa: B018 - parsing it is the check: 'host:80x' raises
    except ValueError:
        raise r.fail("base_url", f"{url!r} has a port that is not a number") from None
    if not parts.hostname:
        raise r.fail("base_url", f"{url!r} names no host: write e.g. https://api.openai.com/v1")


def _read_provider(source: str, path: str, node: Any) -> ProviderConfig:
    r = Reader(source, path, node)
    name = r.require("name", str)
    ptype = r.choice("type", get_args(ProviderType))
    base_url = r.take("base_url", str, "") or _DEFAULT_BASE_URLS.get(ptype, "")
    if ptype != "mock" and not base_url:
        raise r.fail("base_url", f"is required for a provider of type {ptype}")
    if base_url:
        _check_base_url(r, base_url)
    headers = r.take("headers", dict, {})
    defaults = ProviderConfig(name="", type="mock")
    provider = ProviderConfig(
        name=name,
        type=ptype,  # type: ignore[arg-type]
        base_url=base_url.rstrip("/"),
        api_key=r.take("api_key", str, ""),
        max_retries=r.take("max_retries", int, defaults.max_retries),
        headers={str(k): str(v) for k, v in headers.items()},
        first_token_ms=r.take("first_token_ms", float, defaults.first_token_ms),
        token_ms=r.take("token_ms", float, defaults.token_ms),
        reply_tokens=r.positive("reply_tokens", int, defaults.reply_tokens),
        apis=_apis(r, ptype),
        **_azure_options(r, ptype, base_url),
    )
    r.done()
    return provider


_DEFAULT_BASE_URLS = {"gemini": "https://generativelanguage.googleapis.com/v1beta/openai"}
AZURE_API_VERSION = "2024-10-21"
"""The latest GA `api-version` of Azure OpenAI's inference API in Microsoft's REST reference
(learn.microsoft.com/azure/ai-services/openai/reference) when this was written."""
_API_VERSION = re.compile(r"v1|\d{4}-\d{2}-\d{2}(-preview)?")


def _azure_options(r: Reader, ptype: str, base_url: str) -> dict[str, Any]:
    """`api_version` and `auth`, which only an `azure` provider takes."""
    path = urlsplit(base_url).path.rstrip("/")
    if ptype == "azure" and (path.endswith("/openai") or re.search(r"/openai/(v1|deploy)", path)):
        # The provider adds /openai/deployments/... or /openai/v1/ itself.
        raise r.fail(
            "base_url", "is the resource's endpoint, without /openai: https://NAME.openai.azure.com"
        )
    if ptype != "azure":
        for key in ("api_version", "auth"):
            if key in r.node:
                raise r.fail(key, f"is for providers of type azure, not {ptype}")
        return {}
    # YAML reads an unquoted 2024-10-21 as a date.
    version = r.take("api_version", (str, datetime.date), AZURE_API_VERSION)
    version = version.isoformat() if isinstance(version, datetime.date) else version
    if not _API_VERSION.fullmatch(version):
        raise r.fail(
            "api_version",
            f"{version!r} is not an Azure api-version: write a date such as "
            f"{AZURE_API_VERSION} (or YYYY-MM-DD-preview), or v1 for the /openai/v1/ route",
        )
    return {"api_version": version, "auth": r.choice("auth", get_args(AzureAuth), "api-key")}


def _apis(r: Reader, ptype: str) -> tuple[str, ...]:
    apis = str_list(r, "apis")
    if apis is None:
        return ("chat",)
    if ptype not in ("openai", "azure", "gemini"):
        raise r.fail(
            "apis", f"is for providers of type openai, azure or gemini; {ptype} serves its own API"
        )
    if ptype == "gemini" and "responses" in apis:
        # Responses clients are translated to Chat for it, as for any provider.
        raise r.fail("apis", "Gemini's OpenAI-compatible endpoint serves chat only: [chat]")
    unknown = [a for a in apis if a not in ("chat", "responses")]
    if unknown or "chat" not in apis:
        # Chat clients (and completions, embeddings) always go to the Chat API.
        raise r.fail("apis", "must list chat, and responses if it serves it: [chat, responses]")
    return apis


def _read_model(source: str, path: str, node: Any, gateway_timeouts: Timeouts) -> ModelConfig:
    r = Reader(source, path, node)
    name = r.require("name", str)
    timeouts = _read_timeouts(r, gateway_timeouts)
    deployments = read_list(
        r, "deployments", partial(_read_deployment, model_timeouts=timeouts or gateway_timeouts)
    )
    if deployments:
        for key in ("provider", "upstream_model"):
            if r.node.get(key) is not None:
                raise r.fail(key, "is the deployment's: with `deployments`, say it in each one")
    elif r.node.get("provider") in (None, ""):
        raise r.fail(
            "provider", f"model {name!r} names no provider: add `provider:` or `deployments:`"
        )
    model = ModelConfig(
        name=name,
        provider=r.take("provider", str, ""),
        upstream_model=r.take("upstream_model", str, name),
        fallbacks=str_list(r, "fallbacks") or (),
        deployments=tuple(deployments),
        routing=r.choice("routing", get_args(Routing), "weighted"),  # type: ignore[arg-type]
        timeouts=timeouts,
    )
    r.done()
    return model


def _read_deployment(
    source: str, path: str, node: Any, model_timeouts: Timeouts
) -> DeploymentConfig:
    r = Reader(source, path, node)
    limits = Reader(source, r.at("limits"), r.take("limits", dict, {}))
    deployment = DeploymentConfig(
        provider=r.require("provider", str),
        upstream_model=r.require("upstream_model", str),
        weight=r.positive("weight", int, 1),
        limits=Limits(rpm=limits.positive("rpm", int), tpm=limits.positive("tpm", int)),
        name=r.take("name", str, ""),
        timeouts=_read_timeouts(r, model_timeouts),
    )
    limits.done()
    r.done()
    return deployment


def _read_timeouts(r: Reader, inherited: Timeouts) -> Timeouts | None:
    """The `timeouts:` of `r`'s mapping, whole: each field written there, the others
    `inherited`; None when there is none, or it changes nothing (then `inherited` applies,
    the same object: the relay tells a changed one by identity)."""
    node = r.take("timeouts", dict)
    if node is None:
        return None
    t = Reader(r.source, r.at("timeouts"), node)
    written = {f.name: t.positive(f.name, float) for f in fields(Timeouts)}
    t.done()
    timeouts = replace(inherited, **{k: v for k, v in written.items() if v is not None})
    return None if timeouts == inherited else timeouts


def _read_limits(source: str, path: str, node: Any) -> Limits:
    r = Reader(source, path, node)
    limits = Limits(**{f.name: r.positive(f.name, int) for f in fields(Limits)})
    r.done()
    return limits


_SHA256 = re.compile(r"[0-9a-f]{64}")


def _read_sha256(r: Reader, key: str, required: bool) -> str:
    value = (r.require(key, str) if required else r.take(key, str, "")).lower()
    if value and not _SHA256.fullmatch(value):
        raise r.fail(key, "expected 64 hex digits; `gateway hash-key SECRET` prints them")
    return str(value)


def _read_key(source: str, path: str, node: Any) -> KeyConfig:
    r = Reader(source, path, node)
    key = KeyConfig(
        id=r.require("id", str),
        key_sha256=_read_sha256(r, "key_sha256", required=True),
        models=str_list(r, "models"),
        limits=_read_limits(source, r.at("limits"), r.take("limits", dict, {})),
        budget=_read_budget(source, r.at("budget"), r.take("budget", dict)),
    )
    r.done()
    return key


def _read_budget(source: str, path: str, node: Any) -> Budget | None:
    if node is None:
        return None
    r = Reader(source, path, node)
    budget = Budget(
        daily_usd=r.positive("daily_usd", float), monthly_usd=r.positive("monthly_usd", float)
    )
    r.done()
    return budget if budget.daily_usd is not None or budget.monthly_usd is not None else None


_PRICE_FIELDS = ("input", "output", "cached_input", "cache_write")


def _read_pricing(r: Reader) -> dict[str, ModelPrice]:
    table = r.take("pricing", dict, {})
    prices = {}
    for name, node in table.items():
        pr = Reader(r.source, f"{r.at('pricing')}.{name}", node)
        values = {f: pr.take(f, float) for f in _PRICE_FIELDS}
        pr.done()
        for f, value in values.items():
            if value is not None and value < 0:
                raise pr.fail(f, f"must be 0 or more (USD per million tokens), got {value!r}")
        if values["input"] is None or values["output"] is None:
            raise pr.fail("input" if values["input"] is None else "output", "is required")
        prices[str(name)] = ModelPrice(**values)
    return prices


_SINKS = ("stdout", "file", "database")


def _read_logging(source: str, r: Reader) -> LoggingConfig:
    node = dict(r.take("logging", dict, {}))
    sinks = node.pop("sinks", None)
    section: LoggingConfig = read_section(LoggingConfig, source, "logging", node)
    if sinks is None:
        return section
    if not isinstance(sinks, list) or not all(s in _SINKS for s in sinks) or not sinks:
        raise ConfigError(source, "logging.sinks", f"expected a list of {', '.join(_SINKS)}")
    if "file" in sinks and not section.file:
        raise ConfigError(source, "logging.sinks", "the `file` sink needs logging.file")
    return replace(section, sinks=tuple(dict.fromkeys(sinks)))


def parse_config(data: Any, source: str, env: Mapping[str, str]) -> GatewayConfig:
    """Build a validated config from a parsed YAML tree."""
    if data is None:
        data = {}
    data = expand_tree(data, env, source, "")
    r = Reader(source, "", data)
    redis_url = r.take("redis_url", str, "") or env.get("REDIS_URL", "")
    if redis_url:
        try:
            validate_redis_url(redis_url)
        except ValueError as exc:
            # The message names the problem, never the URL (it may hold a password).
            raise r.fail("redis_url", str(exc).removeprefix("redis_url: ")) from None
    providers = read_list(r, "providers", _read_provider)
    timeouts = _read_timeouts(r, Timeouts()) or Timeouts()
    models = read_list(r, "models", partial(_read_model, gateway_timeouts=timeouts))
    keys = read_list(r, "keys", _read_key)
    config = GatewayConfig(
        providers=tuple(providers),
        models=tuple(models),
        keys=tuple(keys),
        redis_url=redis_url,
        limits_backend_failure=r.choice(  # type: ignore[arg-type]
            "limits_backend_failure", get_args(BackendFailure), "open"
        ),
        concurrency_lease_ttl=r.positive(
            "concurrency_lease_ttl", float, GatewayConfig.concurrency_lease_ttl
        ),
        timeouts=timeouts,
        logging=_read_logging(source, r),
        health=_read_health(source, r),
        log_bodies=r.take("log_bodies", bool, False),
        max_body_bytes=r.positive("max_body_bytes", int, GatewayConfig.max_body_bytes),
        max_header_bytes=r.at_least("max_header_bytes", int, 1024, GatewayConfig.max_header_bytes),
        default_max_tokens=r.positive("default_max_tokens", int, GatewayConfig.default_max_tokens),
        admin_key_sha256=_read_sha256(r, "admin_key_sha256", required=False),
        cors_origins=str_list(r, "cors_origins") or (),
        upstream_transport=r.choice(  # type: ignore[arg-type]
            "upstream_transport", get_args(Transport), GatewayConfig.upstream_transport
        ),
        upstream_pool=_read_upstream_pool(source, r),
        shutdown_grace=r.take("shutdown_grace", float, GatewayConfig.shutdown_grace),
        max_requests_per_loop_turn=r.at_least(
            "max_requests_per_loop_turn", int, 0, GatewayConfig.max_requests_per_loop_turn
        ),
        stream_buffer_bytes=r.positive(
            "stream_buffer_bytes", int, GatewayConfig.stream_buffer_bytes
        ),
        egress=_read_egress(source, env),
        pricing=_read_pricing(r),
        database_url=_read_database_url(r, env),
        tracing=_read_tracing(source, r),
        source=source,
    )
    r.done()
    if "database" in config.logging.sinks and not config.database_url:
        raise ConfigError(source, "logging.sinks", "the `database` sink needs database_url")
    _check_references(config)
    return config


def _read_tracing(source: str, r: Reader) -> TracingConfig | None:
    node = r.take("tracing", dict, None)
    if node is None:
        return None
    section: TracingConfig = read_section(TracingConfig, source, "tracing", node)
    if not section.otlp_endpoint:
        return None  # `otlp_endpoint: ${VAR:-}` with VAR unset: off, like no section
    where = "tracing."
    if not section.otlp_endpoint.startswith(("http://", "https://")):
        raise ConfigError(source, where + "otlp_endpoint", "expected http(s)://host:port")
    if not 0.0 <= section.sample_ratio <= 1.0:
        raise ConfigError(source, where + "sample_ratio", "expected a number from 0 to 1")
    if section.export_timeout <= 0 or section.max_queue_size <= 0:
        raise ConfigError(source, where + "export_timeout", "expected positive numbers")
    return section


def _read_health(source: str, r: Reader) -> HealthConfig:
    health: HealthConfig = read_section(HealthConfig, source, "health", r.take("health", dict, {}))
    for f in fields(HealthConfig):
        if getattr(health, f.name) <= 0:
            raise ConfigError(source, f"health.{f.name}", "must be greater than 0")
    return health


def _read_upstream_pool(source: str, r: Reader) -> UpstreamPoolConfig:
    node = r.take("upstream_pool", dict, {})
    pool: UpstreamPoolConfig = read_section(UpstreamPoolConfig, source, "upstream_pool", node)
    if pool.max_idle < 0:
        raise ConfigError(source, "upstream_pool.max_idle", "must be 0 or more")
    if pool.idle_timeout <= 0:
        raise ConfigError(source, "upstream_pool.idle_timeout", "must be greater than 0")
    return pool


def _read_database_url(r: Reader, env: Mapping[str, str]) -> str:
    url = str(r.take("database_url", str, "") or env.get("DATABASE_URL", ""))
    if url and not url.startswith(("postgresql://", "postgres://", "sqlite:///")):
        # The message never repeats the URL: it may hold a password.
        raise r.fail("database_url", "use postgresql://user:pass@host/db or sqlite:///path")
    return url


def _read_egress(source: str, env: Mapping[str, str]) -> EgressProxies:
    try:
        return EgressProxies.from_env(env)
    except ValueError as exc:
        raise ConfigError(source, "environment", str(exc)) from None


def _check_references(config: GatewayConfig) -> None:
    src = config.source
    seen: set[str] = set()
    for i, p in enumerate(config.providers):
        if p.name in seen:
            raise ConfigError(src, f"providers[{i}].name", f"duplicate provider {p.name!r}")
        seen.add(p.name)
    model_names: set[str] = set()
    for i, m in enumerate(config.models):
        if m.name in model_names:
            raise ConfigError(src, f"models[{i}].name", f"duplicate model {m.name!r}")
        model_names.add(m.name)
        _check_deployments(src, f"models[{i}]", m, seen)
    for i, m in enumerate(config.models):
        for j, fb in enumerate(m.fallbacks):
            if fb not in model_names or fb == m.name:
                raise ConfigError(
                    src,
                    f"models[{i}].fallbacks[{j}]",
                    f"{fb!r} is not another model in models",
                )
    ids: set[str] = set()
    hashes: set[str] = set()
    for i, k in enumerate(config.keys):
        if k.id in ids:
            raise ConfigError(src, f"keys[{i}].id", f"duplicate key id {k.id!r}")
        if k.key_sha256 in hashes:
            raise ConfigError(src, f"keys[{i}].key_sha256", "the same secret is used twice")
        ids.add(k.id)
        hashes.add(k.key_sha256)
        for j, name in enumerate(k.models or ()):
            if name not in model_names:
                raise ConfigError(
                    src, f"keys[{i}].models[{j}]", f"{name!r} is not a model in models"
                )
    if not config.models:
        raise ConfigError(src, "models", "at least one model is required")
    if not config.keys:
        raise ConfigError(src, "keys", "at least one key is required (gateway hash-key SECRET)")


def _check_deployments(src: str, path: str, model: ModelConfig, providers: set[str]) -> None:
    # A model written with `provider:` is one deployment made from it: errors name that.
    names: set[str] = set()
    for j, d in enumerate(model.deployments):
        at = path if model.deployments_derived else f"{path}.deployments[{j}]"
        if d.provider not in providers:
            raise ConfigError(
                src,
                f"{at}.provider",
                f"names provider {d.provider!r}, which is not in providers: "
                f"add it there or use one of {sorted(providers) or 'none'}",
            )
        if d.name in names:
            raise ConfigError(
                src,
                f"{at}.name",
                f"model {model.name!r} has two deployments named {d.name!r}: give one a `name`",
            )
        names.add(d.name)


def load_config(
    path: str | os.PathLike[str], env: Mapping[str, str] | None = None
) -> GatewayConfig:
    """Read, expand and validate a YAML config file."""
    env = os.environ if env is None else env
    source = str(path)
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(source, "", f"cannot read the file ({exc.strerror})") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = f"line {mark.line + 1}" if mark is not None else ""
        raise ConfigError(
            source, line, f"not valid YAML ({getattr(exc, 'problem', exc)})"
        ) from None
    return parse_config(data, source, env)


def resolve_config(path: str | None, env: Mapping[str, str] | None = None) -> GatewayConfig:
    """The config `gateway serve` runs: --config, else $GATEWAY_CONFIG, else the default."""
    env = os.environ if env is None else env
    path = path or env.get("GATEWAY_CONFIG") or None
    if path:
        return load_config(path, env)
    egress = _read_egress("<embedded default>", env)
    return embedded_default(redis_url=env.get("REDIS_URL", ""), egress=egress)
