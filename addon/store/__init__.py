"""The persistent store (SQLite, or PostgreSQL for several hosts): accounts, tokens, locks, queues,
stored responses.
"""
