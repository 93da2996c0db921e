"""``make bench``: flask-utd against py-spy and against no extension."""
