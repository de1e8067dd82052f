"""tokenbridge's shared core: settings, keys, events, stream operations, Redis client, logging."""
