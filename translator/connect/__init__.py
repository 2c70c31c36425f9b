"""The Connect-RPC dialect (www.kimi.com): envelopes, calls, the stream decoder, errors, the model
catalog, JWT claims.
"""
