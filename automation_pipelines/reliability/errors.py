"""Retry policy presets, so every op that does I/O retries with backoff and jitter alike."""

import dagster as dg

#: Local I/O (files, SQLite, the local disk): a few quick retries ride out a busy lock.
LOCAL_IO_RETRY = dg.RetryPolicy(
    max_retries=3, delay=1, backoff=dg.Backoff.EXPONENTIAL, jitter=dg.Jitter.PLUS_MINUS
)

#: Network I/O (HTTP, databases, mail): longer backoff for a peer that is briefly down.
NETWORK_RETRY = dg.RetryPolicy(
    max_retries=5, delay=5, backoff=dg.Backoff.EXPONENTIAL, jitter=dg.Jitter.FULL
)
