"""The cloud providers by type: AWS Bedrock, Google Vertex AI, Azure OpenAI
(docs/providers.md#cloud-providers)."""

from __future__ import annotations

from capgate.config import ProviderConfig
from capgate.providers.azure import AzureProvider
from capgate.providers.base import Provider
from capgate.providers.bedrock import BedrockProvider
from capgate.providers.vertex import VertexProvider


def cloud_provider(config: ProviderConfig) -> Provider:
    """The provider of a `bedrock`, `vertex` or `azure` entry (ConfigError: a service-
    account file that cannot be read)."""
    if config.type == "bedrock":
        return BedrockProvider(config)
    if config.type == "vertex":
        return VertexProvider(config)
    return AzureProvider(config)
