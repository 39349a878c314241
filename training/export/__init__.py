"""Bundle export: ONNX encoders with parity checks, tokenizer.json, manifest (see exporter.export_model)."""
