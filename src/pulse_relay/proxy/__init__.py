"""The Pulse API pass-through on the admin listener's port (/pulse/): the forwarding
(proxy), what it reads from a request (capture), and the watches it keeps (autowatch).

Deliberately empty: each module is imported where it is used.
"""
