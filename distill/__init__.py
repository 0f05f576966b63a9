"""kd3 distill stage."""
