"""Generated modules for the Remote Workers API v1test2: the Bots service and Worker."""
