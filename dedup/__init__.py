"""kd3 dedup stage."""
