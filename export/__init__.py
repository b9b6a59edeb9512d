"""torch -> ONNX export of derived networks (installed as ``manas_infer.export``)."""
