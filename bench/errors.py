"""Errors a user can act on: the message says what was wrong and what to type instead."""


class BenchError(Exception):
    """Bad input or an unreachable resource; printed as one clear message, never as a bare trace."""


class DataUnavailable(BenchError):
    """Neither the local data directory nor the hub could provide a task's data."""
