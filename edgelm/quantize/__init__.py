"""int8/int4 quantization through onnxruntime.quantization and llama.cpp's own quantizer."""
