"""Server integrations: where this process sits (:mod:`.place`), uWSGI
(:mod:`.uwsgi`), gunicorn (:mod:`.gunicorn`; its hooks are
:mod:`flask_utd.gunicorn`), the admin listener (:mod:`.admin`), and when the
agent and the listener start (:mod:`.setup`).

The rule: code here imports the standard library, werkzeug (the admin listener's
server), ``flask_utd.core`` and ``flask_utd.agent``; never the Flask side
(``flask_utd.ext``) and never Flask at run time: a Flask app is handed in by the
caller. uWSGI's and gunicorn's own modules are imported only inside functions,
where that server runs. ``tests/test_layout.py`` checks the imports.
"""
