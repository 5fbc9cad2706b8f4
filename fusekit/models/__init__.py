"""Models: the pretrained base model with its task head (base), LoRA adapters (adapters) and their linearization,
L-LoRA (linearize)."""
