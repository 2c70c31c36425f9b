"""What the relay serves: routes, reply forms, the Responses and Messages faces, the admin page,
metrics.
"""
