"""The Anthropic Messages API face: its request onto the chat pipeline, chat chunks onto its
events, its errors.
"""
