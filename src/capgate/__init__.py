"""capgate: a self-hosted LLM gateway and usage limiter for teams."""

__version__ = "0.1.0"
