"""Package data of tokensr.metrics (the NIQE pristine model; see ATTRIBUTION.md)."""
