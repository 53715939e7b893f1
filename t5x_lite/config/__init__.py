"""Gin at the edge: the configurables, the parse, unread-binding and preflight checks."""
