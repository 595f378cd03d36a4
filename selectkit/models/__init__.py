"""Models named in a recipe: the one loader, GGUF and safetensors headers read torch-free, the
causal-LM helpers every pass shares, and the one training loop."""
