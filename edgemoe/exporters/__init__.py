"""Export Hugging Face MoE checkpoints to .edgemoe packages. The only package that may import torch."""
