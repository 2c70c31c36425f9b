"""The legacy dialect (kimi.moonshot.cn, REST + SSE): its calls, its stream decoder, its errors.
"""
