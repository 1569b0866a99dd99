"""Built-in dispatcher plugins, found through Twisted plugin discovery."""
