"""cgraph's version, on its own so that any module (the file writer, the ONNX exporter) can
name it without importing the package's public surface."""

__version__ = "0.1.0"
