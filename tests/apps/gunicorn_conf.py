"""The gunicorn.conf.py of the tests: flask-utd's hooks, as docs/gunicorn.rst says."""

from flask_utd.gunicorn import child_exit  # noqa: F401
from flask_utd.gunicorn import on_exit  # noqa: F401
from flask_utd.gunicorn import post_fork  # noqa: F401
from flask_utd.gunicorn import pre_fork  # noqa: F401
from flask_utd.gunicorn import when_ready  # noqa: F401
