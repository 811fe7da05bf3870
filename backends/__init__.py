"""Code generation backends (C, Triton) land here; see DESIGN.md."""
