"""Rewrite rules, one per module (module name = function name = rule name).

``compiler.pipeline`` holds the ordered stages; approximate rules live in ``rules/approx``.
"""
