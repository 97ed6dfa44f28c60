"""AWS event-stream framing (providers/eventstream.py) and its conversion to Anthropic SSE
(providers/bedrock.py EventStreamToSSE): frames split anywhere, CRCs checked."""

from __future__ import annotations

import base64
import itertools
import struct
import zlib

import orjson
import pytest
from botocore.eventstream import EventStreamBuffer
from hypothesis import given, settings
from hypothesis import strategies as st

from capgate.errors import UpstreamFailed
from capgate.mock.bedrock import chunk_message, exception_message
from capgate.providers.bedrock import EventStreamToSSE
from capgate.providers.eventstream import EventStreamDecoder, EventStreamError, encode

EVENTS = [
    {"type": "message_start", "message": {"id": "m", "usage": {"input_tokens": 7}}},
    {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "hé"}},
    {"type": "message_stop"},
]
STREAM = b"".join(chunk_message(orjson.dumps(e)) for e in EVENTS)


def test_botocore_reads_what_the_encoder_writes() -> None:
    """The encoder (used by the mock) writes frames AWS's own parser accepts."""
    buffer = EventStreamBuffer()
    buffer.add_data(STREAM)
    messages = list(buffer)
    assert [m.headers[":event-type"] for m in messages] == ["chunk"] * 3
    payload = orjson.loads(messages[1].payload)
    assert orjson.loads(base64.b64decode(payload["bytes"])) == EVENTS[1]


@settings(max_examples=100, deadline=None)
@given(cuts=st.lists(st.integers(0, len(STREAM)), max_size=8))
def test_a_stream_split_anywhere_decodes_the_same(cuts: list[int]) -> None:
    decoder = EventStreamDecoder()
    points = sorted({0, *cuts, len(STREAM)})
    messages = []
    for a, b in itertools.pairwise(points):
        messages += decoder.feed(STREAM[a:b])
    assert decoder.pending == 0
    assert [m.headers[":message-type"] for m in messages] == ["event"] * 3
    events = [orjson.loads(base64.b64decode(orjson.loads(m.payload)["bytes"])) for m in messages]
    assert events == EVENTS


def test_a_frame_split_across_reads_waits_for_its_end() -> None:
    frame = encode({":event-type": "chunk"}, b"{}")
    decoder = EventStreamDecoder()
    assert decoder.feed(frame[:5]) == []
    assert decoder.feed(frame[5:-1]) == []
    assert decoder.pending == len(frame) - 1
    (message,) = decoder.feed(frame[-1:])
    assert message.payload == b"{}"


def test_a_message_crc_mismatch_is_refused() -> None:
    frame = bytearray(encode({":event-type": "chunk"}, b'{"bytes":"e30="}'))
    frame[-6] ^= 0x01  # a payload byte
    with pytest.raises(EventStreamError, match="message's CRC"):
        EventStreamDecoder().feed(bytes(frame))


def test_a_prelude_crc_mismatch_is_refused() -> None:
    frame = bytearray(encode({}, b"x"))
    frame[3] += 1  # the total length, no longer matching its CRC
    with pytest.raises(EventStreamError, match="prelude"):
        EventStreamDecoder().feed(bytes(frame))


def test_a_length_out_of_bounds_is_refused() -> None:
    prelude = struct.pack(">II", 64 * 1024 * 1024, 0)
    with pytest.raises(EventStreamError, match="bytes"):
        EventStreamDecoder().feed(prelude + struct.pack(">I", zlib.crc32(prelude)))


def test_chunks_become_anthropic_sse() -> None:
    convert = EventStreamToSSE()
    out = convert.feed(STREAM[:10]) + convert.feed(STREAM[10:]) + convert.finish()
    lines = out.split(b"\n\n")
    assert lines[0].startswith(b"event: message_start\ndata: {")
    assert orjson.loads(lines[1].split(b"data: ")[1]) == EVENTS[1]
    assert lines[2] == b'event: message_stop\ndata: {"type":"message_stop"}'


def test_an_exception_in_the_stream_becomes_an_error_event() -> None:
    out = EventStreamToSSE().feed(exception_message("throttlingException", "slow down"))
    assert out.startswith(b"event: error\ndata: ")
    error = orjson.loads(out.split(b"data: ")[1])
    assert error["error"] == {
        "type": "rate_limit_error", "message": "throttlingException: slow down"
    }  # fmt: skip


def test_a_broken_or_unfinished_stream_fails_the_answer() -> None:
    convert = EventStreamToSSE()
    convert.feed(STREAM[:20])
    with pytest.raises(UpstreamFailed, match="ended inside a message"):
        convert.finish()
    broken = bytearray(STREAM)
    broken[-2] ^= 0xFF
    with pytest.raises(UpstreamFailed, match="CRC"):
        EventStreamToSSE().feed(bytes(broken))
    not_base64 = encode({":message-type": "event", ":event-type": "chunk"}, b'{"bytes":"%%"}')
    with pytest.raises(UpstreamFailed, match="unreadable chunk"):
        EventStreamToSSE().feed(not_base64)
