"""The one error type of the stores, worded for the person looking at the page."""

from __future__ import annotations


class StoreError(RuntimeError):
    """A problem with the results file or its run-control file, worded for the reader."""
