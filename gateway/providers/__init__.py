"""Providers: one module per upstream kind, behind `gateway.providers.base.Provider`."""

from __future__ import annotations

import httpx

from gateway.config import GatewayConfig, ProviderConfig
from gateway.providers.base import Provider


def build_provider(
    config: ProviderConfig, transport: httpx.AsyncBaseTransport, gateway: GatewayConfig
) -> Provider:
    keep_text = gateway.log_bodies
    if config.type == "openai":
        from gateway.providers.openai import OpenAIProvider

        return OpenAIProvider(config, transport, gateway.timeouts, keep_text=keep_text)
    if config.type == "azure":
        from gateway.providers.azure import AzureProvider

        return AzureProvider(config, transport, gateway.timeouts, keep_text=keep_text)
    if config.type == "gemini":
        from gateway.providers.gemini import GeminiProvider

        return GeminiProvider(config, transport, gateway.timeouts, keep_text=keep_text)
    if config.type == "anthropic":
        from gateway.providers.anthropic import AnthropicProvider

        return AnthropicProvider(config, transport, gateway.timeouts, keep_text=keep_text)
    from gateway.providers.mock import MockProvider

    return MockProvider(config, gateway.timeouts)
