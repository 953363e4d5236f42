"""Learning-rate scaling for MM1-style multimodal pre-training: sweep, fit, launch."""
