"""The dispatcher: proxy control socket, relay links, call table, plugins."""
