"""torch → GGUF and torch → ONNX. Weight transforms shared by both formats live here."""
