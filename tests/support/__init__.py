"""Helpers shared by test packages: real servers the tests run against (no mocks)."""
