"""The WSGI application: its factory, errors, auth, health, metrics and API docs."""
