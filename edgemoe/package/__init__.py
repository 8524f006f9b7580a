"""The on-disk .edgemoe package format: constants, writer, reader (numpy, onnx and yaml only)."""
