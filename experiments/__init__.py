"""experiments: see ARCHITECTURE.md."""
