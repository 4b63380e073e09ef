"""Device payloads in: request bodies, the payload schema and the POST views."""
