"""The poly-visual-expert VLM: experts, fusion network, position schemes, model and processor."""
