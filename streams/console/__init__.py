"""The web console: pages served at ``/ui/`` by the streams app, a cookie session for them.

The pages read only what the API serves and act only through it (with ``expect``); this
package adds the static files, the session endpoints and the login codes of ``modelvc ui``.
"""
