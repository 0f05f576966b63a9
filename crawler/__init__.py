"""kd3 crawler stage."""
