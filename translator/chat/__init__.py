"""The chat completions face: request validation and planning, the answer's state machine, chunks
and their fold.
"""
