"""hanseq service: gRPC in front of the engine (batching, workers, health)."""
