"""Plumbing every stage shares: the user-error base class, atomic file writes, and command-line
flags generated from a stage's options model. Kept free of heavy imports."""
