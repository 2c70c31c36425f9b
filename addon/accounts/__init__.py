"""Kimi accounts: the pool and its leases, token refresh, secrets and fingerprints.
"""
