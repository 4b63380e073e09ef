"""The Redis window buffer: key names, Lua scripts, the calls that run them, the live read."""
