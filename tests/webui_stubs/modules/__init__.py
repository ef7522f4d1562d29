"""Fake WebUI `modules` package for tests (see ../README.md)."""
