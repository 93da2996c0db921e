"""The core: what every reader of a dump needs, and nothing that runs in a server.

The report model (:mod:`.report`), the settings (:mod:`.config`), the socket
directory (:mod:`.sockets`), the client side of the wire (:mod:`.wire`), the
collector, the faulthandler fallback's reading side (:mod:`.fallback`), the
summary, the renderings and their table of formats (:mod:`.formats`), and the
lean command (``python -m flask_utd``).

The rule: code here imports only the standard library and ``flask_utd.core``,
except ``core/page.py``, which imports jinja2 when a page is asked for. No Flask,
werkzeug, click, itsdangerous or RPyC, and nothing of the agent, the server
integrations or the Flask side: the lean command must start fast and must work
when the app cannot even be imported. ``tests/test_layout.py`` checks it by
importing every module of this package in a fresh interpreter.
"""
