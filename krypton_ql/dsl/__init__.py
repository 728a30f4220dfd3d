"""The occlusion query language: SQL over occlusion results (the only package that imports
sqlglot)."""
