"""The live sessions web page: its data (:mod:`overview`), its passwords and its static files."""
