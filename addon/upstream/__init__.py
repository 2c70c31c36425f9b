"""Everything that talks to Kimi: the HTTP client, one chat completion, dialects, conversations,
uploads, safe fetching.
"""
