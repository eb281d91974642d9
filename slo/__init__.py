"""slo: see ARCHITECTURE.md."""
