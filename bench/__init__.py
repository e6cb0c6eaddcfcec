"""Benchmarks that compare this project's steps with the tools users would otherwise pick."""
