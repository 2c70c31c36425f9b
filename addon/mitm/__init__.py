"""What runs inside mitmproxy beside the addon class: host-name rules, credentials kept out of
flows, mitmproxy's own error pages as JSON.
"""
