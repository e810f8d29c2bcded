"""The web dashboard: static HTML, CSS and JavaScript served at ``/`` that drive the public API from the
browser with the caller's own API key (``api.dashboard.routes``)."""
