"""The peers the project is measured against, each a WSGI app factory.

Served by the same gunicorn settings as the project (``payload_stats.web.gunicorn_conf``):

- ``bare``: parse the JSON body, answer 204 -- the framework's ceiling;
- ``direct``: one redis-py pipeline per payload, no validation -- the
  minimal form of the project's design;
- ``naive_pg``: one PostgreSQL transaction per payload -- a service
  without a buffer.
"""
