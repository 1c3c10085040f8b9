"""Hostile input: every RPC driven with arbitrary field values and sizes, and with raw bytes
that are not valid protobuf or not valid UTF-8 (sent through a generic stub, since the
generated classes refuse to build them). The server must answer every call with a status a
caller can act on (never INTERNAL or UNKNOWN), never crash, and keep serving."""

from __future__ import annotations

import grpc
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hanseq.v1 import hanseq_pb2 as pb
from tests.conftest import HanseqServer

ACCEPTABLE = {
    grpc.StatusCode.OK,
    grpc.StatusCode.INVALID_ARGUMENT,
    grpc.StatusCode.UNIMPLEMENTED,  # a task name the bundles lack (Generate*)
    grpc.StatusCode.RESOURCE_EXHAUSTED,  # a message over max_message_bytes
    grpc.StatusCode.DEADLINE_EXCEEDED,
}
FUZZ = settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
TASKS = st.sampled_from(["translate", "respond", "summarize", "", "nope", "translate\x00"])
TEXT = st.one_of(
    st.text(max_size=40),
    st.text(alphabet="사과바다하늘 \n\t", min_size=1, max_size=30),
    st.integers(1990, 2010).map(lambda n: "가" * n),  # around max_input_chars
)
U32 = st.integers(0, 2**32 - 1)
F32 = st.floats(width=32, allow_nan=True, allow_infinity=True)


@st.composite
def options(draw) -> pb.DecodingOptions:
    fields = {
        "beam_size": st.one_of(st.integers(0, 10), U32),
        "n_best": st.one_of(st.integers(0, 10), U32),
        "max_length": st.one_of(st.integers(0, 30), U32),
        "min_length": st.one_of(st.integers(0, 30), U32),
        "length_penalty": F32,
        "no_repeat_ngram": st.one_of(st.integers(0, 4), U32),
        "sample": st.booleans(),
        "temperature": F32,
        "top_k": st.one_of(st.integers(0, 50), U32),
        "top_p": F32,
        "seed": st.integers(0, 2**64 - 1),
        "return_attention": st.booleans(),
        "no_cache": st.booleans(),
    }
    chosen = draw(st.lists(st.sampled_from(sorted(fields)), unique=True))
    return pb.DecodingOptions(**{name: draw(fields[name]) for name in chosen})


@st.composite
def requests(draw) -> tuple[str, bytes]:
    """(method, serialized request) for every unary method of the service."""
    method = draw(st.sampled_from(["Translate", "Summarize", "Respond", "Generate", "Batch"]))
    o = draw(options())
    if method == "Translate":
        return method, pb.TranslateRequest(text=draw(TEXT), options=o).SerializeToString()
    if method == "Summarize":
        return method, pb.SummarizeRequest(text=draw(TEXT), options=o).SerializeToString()
    if method == "Generate":
        request = pb.GenerateRequest(task=draw(TASKS), text=draw(TEXT), options=o)
        return method, request.SerializeToString()
    if method == "Respond":
        turns = draw(st.lists(st.tuples(TEXT, st.booleans()), max_size=40))
        history = [pb.Turn(text=t, from_user=u) for t, u in turns]
        request = pb.RespondRequest(message=draw(TEXT), history=history, options=o)
        return method, request.SerializeToString()
    texts = draw(
        st.one_of(st.lists(TEXT, max_size=8), st.integers(250, 260).map(lambda n: ["사과"] * n))
    )
    request = pb.GenerateBatchRequest(task=draw(TASKS), texts=texts, options=o)
    return "GenerateBatch", request.SerializeToString()


def field(number: int, payload: bytes) -> bytes:
    """A length-delimited protobuf field, whatever its bytes are."""
    return _varint(number << 3 | 2) + _varint(len(payload)) + payload


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        out.append((n & 0x7F) | (0x80 if n > 0x7F else 0))
        n >>= 7
        if not n:
            return bytes(out)


@pytest.fixture(scope="module")
def fuzzed(service_bundle_path):
    server = HanseqServer(service_bundle_path)
    server.start()
    channel = grpc.insecure_channel(
        server.target, options=[("grpc.max_send_message_length", 16 * 1024 * 1024)]
    )
    yield server, channel
    channel.close()
    server.stop()


def call(channel: grpc.Channel, method: str, body: bytes) -> grpc.StatusCode:
    """The call's code; for a GenerateBatch that succeeded, the worst of its items' codes
    (an item answered INTERNAL is as much a bug as a call)."""
    raw = channel.unary_unary(f"/hanseq.v1.Seq2Seq/{method}")  # bytes in, bytes out
    try:
        if method == "GenerateStream":
            for _ in channel.unary_stream(f"/hanseq.v1.Seq2Seq/{method}")(body, timeout=20):
                pass
        else:
            reply = raw(body, timeout=20)
    except grpc.RpcError as e:
        return e.code()
    if method == "GenerateBatch":
        for item in pb.GenerateBatchResponse.FromString(reply).items:
            if item.HasField("error") and item.error.code_name != "INVALID_ARGUMENT":
                return getattr(grpc.StatusCode, item.error.code_name)
    return grpc.StatusCode.OK


def serves(channel: grpc.Channel) -> bool:
    body = pb.TranslateRequest(text="사과 바다").SerializeToString()
    reply = channel.unary_unary("/hanseq.v1.Seq2Seq/Translate")(body, timeout=30)
    return bool(pb.GenerateResponse.FromString(reply).text)


@FUZZ
@given(request=requests())
def test_arbitrary_field_values(fuzzed, request):
    _, channel = fuzzed
    method, body = request
    assert call(channel, method, body) in ACCEPTABLE, (method, body[:200])


@FUZZ
@given(
    method=st.sampled_from(["Translate", "Summarize", "Generate", "GenerateStream", "Respond"]),
    junk=st.binary(min_size=1, max_size=64),
    where=st.integers(1, 3),
)
def test_invalid_utf8_and_broken_messages(fuzzed, method, junk, where):
    """Raw bytes in a string field (invalid UTF-8 most of the time), or no message at all."""
    _, channel = fuzzed
    for body in (field(where, junk), junk):
        code = call(channel, method, body)
        assert code in ACCEPTABLE - {grpc.StatusCode.RESOURCE_EXHAUSTED}, (method, body)


def test_large_messages_are_refused_and_the_server_serves_on(fuzzed):
    server, channel = fuzzed
    huge = pb.TranslateRequest(text="가" * (5 * 1024 * 1024 // 3)).SerializeToString()
    assert call(channel, "Translate", huge) == grpc.StatusCode.RESOURCE_EXHAUSTED
    many = pb.GenerateBatchRequest(task="translate", texts=["사과"] * 100_000)
    assert call(channel, "GenerateBatch", many.SerializeToString()) in ACCEPTABLE
    assert serves(channel) and server.process.poll() is None


def test_invalid_utf8_is_named_as_such(fuzzed):
    _, channel = fuzzed
    body = field(1, b"\xed\xa0\x80 \xff")  # a lone surrogate and a stray byte
    with pytest.raises(grpc.RpcError) as caught:
        channel.unary_unary("/hanseq.v1.Seq2Seq/Translate")(body, timeout=10)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert caught.value.details() == (
        "request: is not a valid message (broken protobuf, or a string not UTF-8)"
    )
