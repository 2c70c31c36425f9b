"""Tool calling and structured output over plain text: the prompt, the streaming call parser,
validation, the answer shaper.
"""
