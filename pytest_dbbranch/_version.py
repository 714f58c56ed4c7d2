"""The installed version, kept apart so modules can read it without importing the package top."""

__version__ = "0.1.0"
