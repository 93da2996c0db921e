"""The agent: what runs inside every server process, beside the requests.

The agent's thread and RPyC server (:mod:`.lifecycle`, :mod:`.server`,
:mod:`.service`), the dump of this process (:mod:`.snapshot` over the stack
sources of :mod:`.sources`, :mod:`.waits`, :mod:`.frame_locals`), the request
tracking middleware (:mod:`.tracking`), the faulthandler registration
(:mod:`.faultdump`), ghost-thread detection (:mod:`.ghosts`) and the one registry
of what a forked child renews (:mod:`.forks`).

The rule: code here imports the standard library, RPyC and ``flask_utd.core``;
never Flask, werkzeug, click or itsdangerous, and nothing of the server
integrations or the Flask side. It runs in processes whose requests may all be
stuck: it takes no lock a request thread may hold, and it is told where it
sits rather than asking the server. ``tests/test_layout.py`` checks the imports.
"""

from . import native as _native

# Before any module here imports RPyC, which would import gevent (.native).
_native.import_rpyc()
