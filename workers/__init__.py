"""kd3 workers stage."""
