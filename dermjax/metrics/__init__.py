"""Host-side evaluation metrics (numpy in, floats out)."""
