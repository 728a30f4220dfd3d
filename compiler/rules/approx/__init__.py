"""Approximate rules. None exists yet; none ever runs unless a query asks for approximation."""
