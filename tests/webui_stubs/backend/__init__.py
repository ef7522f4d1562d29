"""Fake of Forge's `backend` package: only what the extension reads (see ../README.md)."""
