"""Pre/post-processing shared by every peer server (numpy + opencv + onnxruntime only)."""
