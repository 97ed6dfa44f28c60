"""A mock LLM upstream speaking the Anthropic Messages and OpenAI wire formats.

- ``responses``: pure answer builders (used in-process by the gateway's demo mode).
- ``server``: the aiohttp app serving them (``create_mock_app``).
- ``runner``: running that app in a loop, a background thread or standalone
  (``python -m capgate.mock``).
- ``directives``: the ``mock:...`` prompt directives tests use to steer it.
"""
