"""Kimi's exchanges as mitmproxy flows, and replaying captures into reports and fixtures.
"""
