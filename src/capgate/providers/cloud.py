"""The cloud providers by type: AWS Bedrock, Google Vertex AI, Azure OpenAI
(docs/providers.md#cloud-providers)."""

from __future__ import annotations

from collections.abc import Mapping

from capgate.provider_config import ProviderConfig
from capgate.providers.azure import AzureProvider
from capgate.providers.base import Provider
from capgate.providers.bedrock import BedrockProvider
from capgate.providers.vertex import VertexProvider


def cloud_provider(config: ProviderConfig, environ: Mapping[str, str] | None = None) -> Provider:
    """The provider of a `bedrock`, `vertex` or `azure` entry (ConfigError: a service-
        account file that cannot be read; Bedrock with no AWS credentials). `environ` is where
    Bedrock's credential chain looks (the process's environment)."""
    if config.type == "bedrock":
        return BedrockProvider(config, environ)
    if config.type == "vertex":
        return VertexProvider(config)
    return AzureProvider(config)
