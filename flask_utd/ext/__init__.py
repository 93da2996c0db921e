"""The Flask side: the extension (:mod:`.extension`, :mod:`.setup`), the
blueprint ``utd_bp`` (:mod:`.blueprint`), the signed endpoint (:mod:`.endpoint`,
:mod:`.signing`), the metrics (:mod:`.metrics`, :mod:`.prometheus`) and the
``flask utd`` commands (:mod:`.cli`).

The rule: this is the only package that imports Flask, click, itsdangerous and
prometheus_client. It may import every other tier; none imports it (the public
hooks module :mod:`flask_utd.gunicorn` joins it to the gunicorn integration).
``tests/test_layout.py`` checks the imports.
"""
