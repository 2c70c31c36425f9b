"""The process around the proxy: the config file and its reload, logging, the event loop, worker
processes.
"""
