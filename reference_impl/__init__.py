"""reference_impl: see ARCHITECTURE.md."""
