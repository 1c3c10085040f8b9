"""Python client for hanseq, a Korean sequence-to-sequence service (translate, respond,
summarize) over gRPC.

    from hanseq_client import Client

    with Client("127.0.0.1:50051") as client:
        print(client.translate("파일을 열 수 없습니다.").text)
"""

from hanseq_client.aio import AsyncClient
from hanseq_client.channel import NO_RETRY, TLS, Retry
from hanseq_client.client import Client
from hanseq_client.errors import (
    Cancelled,
    DeadlineExceeded,
    FailedPrecondition,
    HanseqError,
    InvalidInput,
    Overloaded,
    PermissionDenied,
    ServerError,
    Unauthenticated,
    Unavailable,
    Unsupported,
)
from hanseq_client.inputs import DecodingOptions, Turn
from hanseq_client.results import (
    Alternative,
    Attention,
    Limits,
    ModelInfo,
    Models,
    Result,
    ServedModel,
    StreamUpdate,
    Timings,
)
from hanseq_client.version import __version__

__all__ = [
    "NO_RETRY",
    "TLS",
    "Alternative",
    "AsyncClient",
    "Attention",
    "Cancelled",
    "Client",
    "DeadlineExceeded",
    "DecodingOptions",
    "FailedPrecondition",
    "HanseqError",
    "InvalidInput",
    "Limits",
    "ModelInfo",
    "Models",
    "ServedModel",
    "Overloaded",
    "PermissionDenied",
    "Result",
    "Retry",
    "ServerError",
    "StreamUpdate",
    "Timings",
    "Turn",
    "Unauthenticated",
    "Unavailable",
    "Unsupported",
    "__version__",
]
