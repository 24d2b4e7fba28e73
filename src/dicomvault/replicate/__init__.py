"""Replication to off-site sites: outbox workers, throttling, schedules, retries."""
