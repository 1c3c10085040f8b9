"""hanseq: a Korean sequence-to-sequence engine (``hanseq.engine``) served over gRPC
(``hanseq.service``); ``hanseq.v1`` holds the stubs generated from ``proto/`` at install time.
ARCHITECTURE.md is the map."""
