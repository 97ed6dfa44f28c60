"""Translation between the Anthropic Messages and OpenAI Chat Completions formats. Pure:
no I/O, so the gateway calls it when a route sends a request to a provider of the other
kind, and the tests drive it with tables, generated inputs and the official SDKs.

    requests   messages_to_chat, chat_to_messages      (translate_*_request.py)
    answers    chat_completion_to_message,
               message_to_chat_completion              (translate_answer.py)
    streams    ChatToMessagesStream, MessagesToChatStream  (translate_stream.py)
    errors     error_to_anthropic, error_to_openai     (translate_errors.py)

A client's request that cannot be translated raises InvalidRequest naming the field; an
upstream answer is read leniently. docs/translation.md tells users what maps to what and
what is dropped.
"""

from __future__ import annotations

from capgate.wire.translate_answer import chat_completion_to_message, message_to_chat_completion
from capgate.wire.translate_anthropic_request import messages_to_chat
from capgate.wire.translate_chat_request import chat_to_messages
from capgate.wire.translate_errors import error_to_anthropic, error_to_openai
from capgate.wire.translate_stream import ChatToMessagesStream, MessagesToChatStream

__all__ = [
    "ChatToMessagesStream",
    "MessagesToChatStream",
    "chat_completion_to_message",
    "chat_to_messages",
    "error_to_anthropic",
    "error_to_openai",
    "message_to_chat_completion",
    "messages_to_chat",
]
