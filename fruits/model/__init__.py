"""The model: images, the featurizer protocol and its runtimes, quantization, the UDF, identify."""
