"""Starts and stops the real services recwatch runs on: Kafka (KRaft), the chDB store daemon, ClickHouse.

Everything ``infra up`` starts is recorded in ``$RECWATCH_HOME/infra.json`` with pid files, so ``down`` stops
exactly those processes and other commands find the bootstrap servers and the store URL without flags.
"""

__all__: list[str] = []
