"""The Pulse API pass-through on the admin listener's port (`/pulse/`, docs/api.md): the
forwarding (forward), which headers cross it (headers), what it reads from a request
(capture) and from an answer (answer), and the watches it records (autowatch).

Deliberately empty: each module is imported where it is used.
"""
