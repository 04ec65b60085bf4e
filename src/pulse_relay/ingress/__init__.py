"""The public listener, in the order a webhook meets it: the connection (protocol),
TLS (tls), who may call and which headers pass (edge), the signature (signature),
and the handler that stores and acknowledges it (server).

Deliberately empty: `pulse-relay events` and other scripts import `signature` or
`edge` alone, without the HTTP stack `server` needs.
"""
