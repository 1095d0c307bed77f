"""Where a trained run goes next: ONNX export, the Hugging Face Hub, an HTTP server."""
