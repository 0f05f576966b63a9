"""The offline end-to-end demo (`make demo` / `kd3 demo`)."""
