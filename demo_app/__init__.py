"""The flask-utd demo: the app (demo_app.app), and `make demo` (demo_app.run)."""
