"""Generator service: autoregressive text generation with transformers causal LMs."""
