"""AWS Bedrock: Anthropic models through InvokeModel, or any model through Converse
(`api: converse`), signed with SigV4 (`sigv4.py`) with credentials from the AWS chain
(`aws_credentials.py`).

The gateway hands it an Anthropic Messages body; it goes to
`POST /model/{model id}/invoke` (or `/invoke-with-response-stream` when the body asks for
a stream) with `anthropic_version: bedrock-2023-05-31` and without `model` and `stream`,
which Bedrock takes from the path. The model id is the route's upstream model
(`anthropic.claude-...-v1:0`, or an inference profile `us.anthropic...`).

The answer comes back as Anthropic's: a whole body as it is; a stream in AWS event-stream
framing whose `chunk` events each carry one Anthropic event (base64 JSON), relayed as
Anthropic SSE; errors (`{"message"}` with a status: 429 ThrottlingException, 400
ValidationException, ...) as Anthropic error bodies with the same status. 424
(ModelErrorException) becomes 502, so that it is retried like a server error.

Converse (`POST /model/{model id}/converse`, `/converse-stream`) has a format of its own,
the same for every model (Amazon Nova, Meta Llama, Mistral, Anthropic): the Anthropic body
is translated to it and its answers back (`converse.py`, `converse_stream.py`), so the
gateway sees an Anthropic provider either way; the errors are InvokeModel's.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import AsyncIterator, Callable, Mapping
from datetime import UTC, datetime
from urllib.parse import quote, unquote

import orjson

from capgate.errors import UpstreamFailed
from capgate.provider_config import ProviderConfig
from capgate.providers import sigv4
from capgate.providers.aws_credentials import RefreshingCredentials, Source, resolve
from capgate.providers.base import Endpoint
from capgate.providers.converse import Untranslatable, converse_to_message, messages_to_converse
from capgate.providers.converse_stream import ConverseToSSE
from capgate.providers.converted import (
    ConvertedAnswer,
    anthropic_error,
    error_message,
    json_body,
    pool_for,
)
from capgate.providers.eventstream import EventStreamDecoder, EventStreamError
from capgate.providers.upstream import Pool, header_lines

ANTHROPIC_VERSION = "bedrock-2023-05-31"
SERVICE = "bedrock"
# Exceptions inside a stream (`:exception-type`) -> the Anthropic error type.
_STREAM_ERRORS = {
    "throttlingException": "rate_limit_error",
    "serviceUnavailableException": "overloaded_error",
    "validationException": "invalid_request_error",
}


class BedrockProvider:
    dialects = frozenset({"anthropic"})

    def __init__(
        self,
        config: ProviderConfig,
        environ: Mapping[str, str] | None = None,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
        source: Source | None = None,
    ) -> None:
        assert config.region
        self.name = config.name
        self.type: str = config.type
        self.first_byte_timeout_s = config.first_byte_timeout_s
        self.chat_output_field = "max_tokens"  # never called in Chat Completions
        self._config = config
        self._region = config.region
        self.credentials = RefreshingCredentials(
            config.name, source or resolve(config, environ if environ is not None else {})
        )
        self._converse = config.api == "converse"
        self._clock = clock
        self._pool: Pool | None = None

    def supports(self, endpoint: Endpoint) -> bool:
        return endpoint is Endpoint.MESSAGES

    def _client(self) -> Pool:
        if self._pool is None:
            self._pool = pool_for(self._config, self._config.url)
        return self._pool

    def request(self, body: bytes, client_headers: Mapping[str, str]) -> tuple[str, bytes, bool]:
        """The path, body and whether it streams (pure, for tests and `send`)."""
        data = json_body(body, f'provider "{self.name}"')
        model = data.pop("model", None)
        if not isinstance(model, str) or not model:
            raise UpstreamFailed(f'provider "{self.name}": the request names no model', sent=False)
        stream = data.pop("stream", False) is True
        if self._converse:
            header = client_headers.get("anthropic-beta") or ""
            betas = [b.strip() for b in header.split(",") if b.strip()]
            converse = messages_to_converse(data, model, betas)  # Untranslatable: 400
            action = "converse-stream" if stream else "converse"
            return f"/model/{quote(model, safe='')}/{action}", orjson.dumps(converse), stream
        data["anthropic_version"] = ANTHROPIC_VERSION
        beta = client_headers.get("anthropic-beta")
        if beta and "anthropic_beta" not in data:  # Bedrock takes betas in the body
            data["anthropic_beta"] = [b.strip() for b in beta.split(",") if b.strip()]
        action = "invoke-with-response-stream" if stream else "invoke"
        return f"/model/{quote(model, safe='')}/{action}", orjson.dumps(data), stream

    async def send(
        self, endpoint: Endpoint, body: bytes, client_headers: Mapping[str, str]
    ) -> ConvertedAnswer | Refused:
        try:
            path, payload, stream = self.request(body, client_headers)
        except Untranslatable as exc:
            return Refused(400, f'provider "{self.name}" (Bedrock Converse): {exc}')
        credentials = await self.credentials.get()  # UpstreamFailed 503 before sending
        pool = self._client()
        headers = {k.lower(): v for k, v in self._config.headers.items()}  # signed too
        headers |= {"content-type": "application/json", "accept": "application/json"}
        if stream:
            headers["accept"] = "application/vnd.amazon.eventstream"
        signed = sigv4.sign(
            credentials, self._region, SERVICE, "POST", pool.origin,
            pool.base_path + path, payload, self._clock(), headers,
        )  # fmt: skip
        head = pool.head(path, [*headers.items(), ("accept-encoding", "identity")])
        answer = await pool.post(head + header_lines(signed.items()), payload)
        request_id = answer.headers.get("x-amzn-requestid")
        if request_id:  # as Anthropic's `request-id` (SDKs, Claude Code's transcripts)
            answer.headers.setdefault("request-id", request_id)
        if answer.status >= 400:
            status = 502 if answer.status == 424 else answer.status
            return ConvertedAnswer(
                answer, status, _json_headers(answer.headers),
                whole=lambda data: anthropic_error(status, error_message(data)),
            )  # fmt: skip
        if stream:
            headers = {**answer.headers, "content-type": "text/event-stream; charset=utf-8"}
            converter = (
                ConverseToSSE(_model(path), request_id) if self._converse else EventStreamToSSE()
            )
            return ConvertedAnswer(answer, answer.status, headers, stream=converter)
        if self._converse:
            model = _model(path)
            return ConvertedAnswer(
                answer, answer.status, _json_headers(answer.headers),
                whole=lambda data: _converse_answer(data, model, request_id),
            )  # fmt: skip
        return ConvertedAnswer(answer, answer.status, answer.headers)

    async def close(self) -> None:
        await self.credentials.close()
        if self._pool is not None:
            await self._pool.close()


def _model(path: str) -> str:
    return unquote(path.split("/")[2])


def _converse_answer(data: bytes, model: str, request_id: str | None) -> bytes:
    try:
        parsed = orjson.loads(data)
    except orjson.JSONDecodeError:
        raise UpstreamFailed("Bedrock's Converse answer is not JSON") from None
    if not isinstance(parsed, dict):
        raise UpstreamFailed("Bedrock's Converse answer is not a JSON object")
    return orjson.dumps(converse_to_message(parsed, model, request_id))


class Refused:
    """An answer made here, not upstream: a request Converse cannot carry (nothing sent,
    nothing charged), shown to the client as a 400 in its dialect."""

    cost_nano = None
    complete = True

    def __init__(self, status: int, message: str) -> None:
        self.status = status
        self.headers = {"content-type": "application/json"}
        self._body = anthropic_error(status, message)

    async def read(self) -> bytes:
        return self._body

    async def chunks(self) -> AsyncIterator[bytes]:
        yield self._body

    def close(self) -> None:
        return None


def _json_headers(headers: Mapping[str, str]) -> dict[str, str]:
    return {**headers, "content-type": "application/json"}


class EventStreamToSSE:
    """Bedrock's event stream -> Anthropic SSE, event by event."""

    def __init__(self) -> None:
        self._decoder = EventStreamDecoder()

    def feed(self, data: bytes) -> bytes:
        try:
            messages = self._decoder.feed(data)
        except EventStreamError as exc:
            raise UpstreamFailed(f"Bedrock sent a broken stream: {exc}") from None
        out = []
        for message in messages:
            kind = message.headers.get(":message-type")
            if kind == "event" and message.headers.get(":event-type") == "chunk":
                out.append(_chunk(message.payload))
            elif kind in ("exception", "error"):
                name = str(
                    message.headers.get(":exception-type") or message.headers.get(":error-code")
                )
                error = {
                    "type": "error",
                    "error": {
                        "type": _STREAM_ERRORS.get(name, "api_error"),
                        "message": f"{name}: {error_message(message.payload)}",
                    },
                }
                out.append(b"event: error\ndata: " + orjson.dumps(error) + b"\n\n")
        return b"".join(out)

    def finish(self) -> bytes:
        if self._decoder.pending:
            raise UpstreamFailed("Bedrock's stream ended inside a message")
        return b""


def _chunk(payload: bytes) -> bytes:
    try:
        event = orjson.loads(base64.b64decode(orjson.loads(payload)["bytes"], validate=True))
        name = event["type"]
    except (orjson.JSONDecodeError, binascii.Error, KeyError, TypeError) as exc:
        raise UpstreamFailed(f"Bedrock sent an unreadable chunk ({exc})") from None
    return b"event: %s\ndata: %s\n\n" % (str(name).encode(), orjson.dumps(event))
