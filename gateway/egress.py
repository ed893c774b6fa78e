"""Which egress proxy, if any, carries the gateway's requests to each upstream origin.

Corporate networks reach providers only through a proxy named in the environment, the way
curl and every HTTP library read it: `HTTPS_PROXY` for https origins, `HTTP_PROXY` for http
ones, `ALL_PROXY` for either when its own is unset, `NO_PROXY` for the hosts reached
directly. Lower-case forms win over upper-case ones; an empty value is unset. The variables
are read once, by the config loader (`EgressProxies.from_env`); the three transports ask
`EgressProxies.route` per origin and so honour them alike (`upstream_transport`).

`NO_PROXY` is a comma-separated list, matched as curl matches it: `*` alone bypasses every
proxy; a host name matches itself and its subdomains (`example.com` and `.example.com` both
match `api.example.com` and `example.com`); an IP address matches itself and a CIDR block
its network (`10.0.0.0/8`, `fd00::/8`; host names are not resolved to be compared); an entry
may end in `:port` to match that port only. Names are compared without case.

Not supported, and refused at start-up rather than ignored: a proxy spoken to over TLS
(`https://` proxy URLs) and SOCKS proxies. What is supported: `http://[user:password@]host
[:port]` (no scheme means http; no port means 80, as httpx and aiohttp take it), the
credentials sent as `Proxy-Authorization: Basic`. They are kept out of every repr and log
line (`Proxy.shown`).
"""

from __future__ import annotations

import base64
import ipaddress
from collections.abc import Mapping
from dataclasses import dataclass, field
from urllib.parse import unquote, urlsplit

_IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


@dataclass(frozen=True)
class Proxy:
    """An HTTP proxy: where it listens, and the Basic credentials it wants (if any)."""

    host: str
    port: int
    username: str = field(default="", repr=False)
    password: str = field(default="", repr=False)

    @property
    def shown(self) -> str:
        """The proxy's URL without credentials: what logs and error messages may show."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    @property
    def authorization(self) -> str | None:
        """The `Proxy-Authorization` header's value, None without credentials."""
        if not self.username and not self.password:
            return None
        pair = f"{self.username}:{self.password}".encode()
        return "Basic " + base64.b64encode(pair).decode("ascii")


@dataclass(frozen=True)
class _Rule:
    """One `NO_PROXY` entry: a domain (matching its subdomains too) or an IP network."""

    domain: str = ""
    network: _IPNetwork | None = None
    port: int | None = None

    def matches(
        self, host: str, ip: ipaddress.IPv4Address | ipaddress.IPv6Address | None, port: int
    ) -> bool:
        if self.port is not None and self.port != port:
            return False
        if self.network is not None:
            return ip is not None and ip.version == self.network.version and ip in self.network
        return host == self.domain or host.endswith("." + self.domain)


@dataclass(frozen=True)
class EgressProxies:
    """The proxies of the environment; `route` answers per origin."""

    http: Proxy | None = None
    https: Proxy | None = None
    bypass_all: bool = False
    no_proxy: tuple[_Rule, ...] = ()
    no_proxy_text: str = ""
    """`NO_PROXY` as it was given, for the start-up banner."""

    @property
    def active(self) -> bool:
        return not self.bypass_all and (self.http is not None or self.https is not None)

    def route(self, scheme: str, host: str, port: int) -> Proxy | None:
        """The proxy for `scheme://host:port` (the host as httpx gives it: lower-case, an
        IPv6 address without brackets), None to connect directly."""
        proxy = self.https if scheme == "https" else self.http if scheme == "http" else None
        if proxy is None or self.bypass_all:
            return None
        host = host.lower().rstrip(".")
        try:
            ip: ipaddress.IPv4Address | ipaddress.IPv6Address | None = ipaddress.ip_address(host)
        except ValueError:
            ip = None
        if any(rule.matches(host, ip, port) for rule in self.no_proxy):
            return None
        return proxy

    def describe(self) -> str:
        """One line for the start-up banner, without credentials; "" when no proxy is set."""
        if not self.active:
            return ""
        parts = [
            f"{scheme} via {proxy.shown}" + (" (with credentials)" if proxy.authorization else "")
            for scheme, proxy in (("https", self.https), ("http", self.http))
            if proxy is not None
        ]
        if self.no_proxy_text:
            parts.append(f"not for NO_PROXY={self.no_proxy_text}")
        return "egress proxy: " + ", ".join(parts)

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> EgressProxies:
        """Read the proxy variables; ValueError names the variable that is wrong (never its
        value, which may hold a password)."""

        def read(name: str) -> tuple[str, str]:
            for variant in (name.lower(), name):
                value = env.get(variant, "").strip()
                if value:
                    return variant, value
            return name, ""

        any_name, any_value = read("ALL_PROXY")
        proxies: dict[str, Proxy | None] = {}
        for scheme in ("http", "https"):
            name, value = read(f"{scheme.upper()}_PROXY")
            if not value:
                name, value = any_name, any_value
            proxies[scheme] = _parse_proxy(name, value) if value else None
        no_name, no_text = read("NO_PROXY")
        entries = [e for e in no_text.replace(" ", ",").split(",") if e]
        return cls(
            http=proxies["http"],
            https=proxies["https"],
            bypass_all="*" in entries,
            no_proxy=tuple(_parse_rule(no_name, e) for e in entries if e != "*"),
            no_proxy_text=",".join(entries),
        )


def _parse_proxy(name: str, value: str) -> Proxy:
    text = value if "://" in value else "http://" + value
    try:
        parts = urlsplit(text)
        port = parts.port
    except ValueError:
        raise ValueError(f"{name} is not a proxy URL (http://[user:password@]host:port)") from None
    if parts.scheme.lower() != "http":
        raise ValueError(
            f"{name}: {parts.scheme}:// proxies are not supported, only http:// ones "
            "(an http proxy tunnels https with CONNECT)"
        )
    if not parts.hostname:
        raise ValueError(f"{name} names no proxy host (http://[user:password@]host:port)")
    return Proxy(
        host=parts.hostname,
        port=port or 80,
        username=unquote(parts.username or ""),
        password=unquote(parts.password or ""),
    )


def _parse_rule(name: str, entry: str) -> _Rule:
    text = entry.lower()
    port: int | None = None
    # A port follows the last colon of a name, an IPv4 address or a bracketed IPv6 one; a
    # bare IPv6 address (several colons, no brackets) has none.
    if text.startswith("["):
        address, _, rest = text[1:].partition("]")
        if rest:
            port = _parse_port(name, entry, rest.removeprefix(":"))
        text = address
    elif text.count(":") == 1:
        text, _, digits = text.partition(":")
        port = _parse_port(name, entry, digits)
    try:
        network = ipaddress.ip_network(text, strict=False)
    except ValueError:
        if "/" in text:
            raise ValueError(f"{name}: {entry!r} is not a valid CIDR block") from None
        domain = text.strip(".")
        if not domain:
            raise ValueError(f"{name}: {entry!r} names no host") from None
        return _Rule(domain=domain, port=port)
    return _Rule(network=network, port=port)


def _parse_port(name: str, entry: str, digits: str) -> int:
    if not digits.isdigit() or not 0 < int(digits) < 65536:
        raise ValueError(f"{name}: {entry!r} has an invalid port")
    return int(digits)
