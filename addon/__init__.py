"""kimi-free-api's mitmproxy addon: the I/O around the sans-I/O translator.

Load it with `mitmdump -s addon/kimi_proxy.py`, or run the `kimi-free-api` console script.
"""
