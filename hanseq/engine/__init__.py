"""hanseq engine: Korean seq2seq with attention; pure PyTorch, no gRPC."""
