"""Migration policies (background moves of experts between devices)."""
