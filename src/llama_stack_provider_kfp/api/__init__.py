"""The llama-stack face: the only package that imports llama-stack."""
