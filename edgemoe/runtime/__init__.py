"""The device runtime: numpy + onnxruntime only (never torch)."""
