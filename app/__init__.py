"""payload-stats: video-player telemetry into billing-grade traffic statistics.

The package follows the pipeline: ``ingest`` (device payloads in) writes into
``buffer`` (the Redis window buffer); ``flush`` moves closed windows into
``postgres`` exactly once; ``query`` reads them back; ``web`` is the WSGI
application around them and ``ops`` runs it all. The rules each stage keeps
are in the repository's ``docs/``.
"""
