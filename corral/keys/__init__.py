"""API keys: who may call what, how much, and whose files and batches are whose."""
