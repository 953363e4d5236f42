"""MM1 in PyTorch: image encoder -> vision-language connector -> decoder-only LM, and its trainer.

McKinzie et al., "MM1: Methods, Analysis & Insights from Multimodal LLM Pre-training", 2024.
"""
